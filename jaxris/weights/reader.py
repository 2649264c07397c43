"""The one checkpoint reader of every converter: files, Hugging Face directories and in-memory
state_dicts -> a lazy mapping name -> numpy array.

Safety (DESIGN.md principle 9): ``.pth``/``.bin``/``.pt`` pickles are read with
``torch.load(weights_only=True)``, which builds tensors and plain containers only. The one class
allowed on top is ``argparse.Namespace``, a plain attribute bag that unilm's training scripts store
next to the weights; anything else is refused by torch, and the error names the file.
``.safetensors`` files hold no code at all.

Memory: nothing is converted when a checkpoint is read. Zip-format pickles are memory-mapped
(``torch.load(mmap=True)``; legacy pre-1.6 files cannot be and are loaded whole) and safetensors
are opened with ``safe_open``, so a tensor's bytes are read when the tensor is asked for, and a
converter that takes one tensor at a time holds one float32 copy at a time. Training-checkpoint
wrappers (``{"state_dict"|"model"|"module": {...}, "optimizer": ...}``) and DDP's ``module.`` key
prefix are removed before any tensor is touched, so optimizer states are never read.

Every value of the mapping is a numpy array: float32 for any floating tensor (fp16, bf16, fp64),
the stored dtype otherwise. ``shape(name)``/``dtype(name)`` answer without reading, and
``stand_ins()`` gives zero-stride arrays of the right shapes for code that only reads shapes.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import zipfile
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

WRAPPERS = ("state_dict", "model", "module")  # keys under which training scripts keep the weights
DDP_PREFIX = "module."
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# safetensors dtype codes numpy reads as they are; every other code (BF16, F8_*) goes through torch.
_SAFETENSORS_NUMPY = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
                      "I16": np.int16, "I8": np.int8, "U64": np.uint64, "U32": np.uint32, "U16": np.uint16,
                      "U8": np.uint8, "BOOL": np.bool_}

Spec = tuple[tuple[int, ...], np.dtype]  # (shape, dtype of the array handed out)


class ReadError(ValueError):
  """A checkpoint that cannot be read, or is not a state_dict; the message names the file."""


def _first_line(e: BaseException) -> str:
  return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"


def _is_float(dtype) -> bool:
  dtype = np.dtype(dtype)
  return dtype.kind == "f" or "float" in dtype.name  # ml_dtypes' bfloat16 / float8 are kind 'V'


def _out_dtype(dtype) -> np.dtype:
  return np.dtype(np.float32) if _is_float(dtype) else np.dtype(dtype)


class StateDict(Mapping[str, np.ndarray]):
  """name -> numpy array, read (and cast: floating -> float32) each time it is asked for."""

  def __init__(self, specs: Mapping[str, Spec], load: Callable[[str], Any], where: str):
    self._specs = dict(specs)
    self._load = load
    self.where = where  # the file (or "the state_dict"), for error messages

  def __getitem__(self, name: str) -> np.ndarray:
    shape, dtype = self._specs[name]
    try:
      array = np.asarray(self._load(name))
    except ReadError:
      raise
    except Exception as e:  # a truncated file, a failing transform: name both, not a library traceback
      raise ReadError(f"cannot read {name} from {self.where}: {_first_line(e)}") from None
    return array.astype(dtype, copy=False)

  def __iter__(self) -> Iterator[str]:
    return iter(self._specs)

  def __len__(self) -> int:
    return len(self._specs)

  def __contains__(self, name) -> bool:  # without reading the tensor, unlike Mapping's default
    return name in self._specs

  def shape(self, name: str) -> tuple[int, ...]:
    return self._specs[name][0]

  def dtype(self, name: str) -> np.dtype:
    return self._specs[name][1]

  def nbytes(self) -> int:
    return sum(int(np.prod(s)) * d.itemsize for s, d in self._specs.values())

  def stand_ins(self) -> dict[str, np.ndarray]:
    """Zero-stride arrays with each tensor's shape and dtype: shapes for free, values meaningless."""
    return {k: np.broadcast_to(np.zeros((), d), s) for k, (s, d) in self._specs.items()}


# --- in-memory state_dicts (torch tensors, numpy or jax arrays) ---

def _is_tensor(value) -> bool:
  return hasattr(value, "shape") and hasattr(value, "dtype")


def _numpy_of(value) -> np.ndarray:
  if hasattr(value, "detach"):  # a torch tensor; float() first: numpy has no bfloat16
    value = value.detach().cpu()
    return value.float().numpy() if value.is_floating_point() else value.numpy()
  return np.asarray(value)


def _dtype_of(value) -> np.dtype:
  if hasattr(value, "detach"):
    return np.dtype(np.float32) if value.is_floating_point() else value.new_empty(0).numpy().dtype
  return _out_dtype(value.dtype)


def lazy(state_dict: Mapping, where: str = "the state_dict") -> StateDict:
  """A mapping of tensors as a StateDict (itself if it is one); refuses entries that are not tensors."""
  if isinstance(state_dict, StateDict):
    return state_dict
  if not isinstance(state_dict, Mapping):
    raise ReadError(f"{where} holds a {type(state_dict).__name__}, not a state_dict (a mapping of names to tensors)")
  not_tensors = sorted(f"{k} ({type(v).__name__})" for k, v in state_dict.items() if not _is_tensor(v))
  if not_tensors:
    raise ReadError(f"{where}: the state_dict has entries that are not tensors: {', '.join(not_tensors)}")
  specs = {k: (tuple(int(n) for n in v.shape), _dtype_of(v)) for k, v in state_dict.items()}
  return StateDict(specs, lambda k: _numpy_of(state_dict[k]), where)


def unwrap(checkpoint: Any) -> Any:
  """The weights inside a training checkpoint: ``state_dict``/``model``/``module`` dicts
  (repeatedly) and DDP's ``module.`` prefix removed; the rest (optimizer, epoch...) dropped unread."""
  while isinstance(checkpoint, Mapping):
    inner = next((checkpoint[k] for k in WRAPPERS if isinstance(checkpoint.get(k), Mapping)), None)
    if inner is None:
      break
    checkpoint = inner
  if isinstance(checkpoint, Mapping) and checkpoint and all(
      isinstance(k, str) and k.startswith(DDP_PREFIX) for k in checkpoint):
    checkpoint = {k[len(DDP_PREFIX):]: v for k, v in checkpoint.items()}
  return checkpoint


def from_checkpoint(checkpoint: Any, where: str = "the checkpoint") -> StateDict:
  """An in-memory checkpoint (a state_dict, or a training dict holding one) -> StateDict."""
  return lazy(unwrap(checkpoint), where)


# --- files ---

def _read_torch(path: str) -> StateDict:
  import torch  # only reading pickles needs PyTorch

  with torch.serialization.safe_globals([argparse.Namespace]):
    try:
      obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as e:
      raise ReadError(f"{path} holds objects that are not plain data, refused by torch.load(weights_only=True); "
                      f"re-save only its state_dict. torch says: {_first_line(e)}") from None
  return from_checkpoint(obj, where=path)


def _read_safetensors(path: str) -> StateDict:
  from safetensors import safe_open

  handles = {"numpy": safe_open(path, framework="numpy")}
  specs, codes = {}, {}
  for name in handles["numpy"].keys():
    piece = handles["numpy"].get_slice(name)
    codes[name] = piece.get_dtype()
    specs[name] = (tuple(piece.get_shape()), _out_dtype(_SAFETENSORS_NUMPY.get(codes[name], np.float32)))

  def load(name):
    if codes[name] in _SAFETENSORS_NUMPY:
      return handles["numpy"].get_tensor(name)
    if "pt" not in handles:  # bfloat16 / float8: numpy has no such dtype, torch does
      handles["pt"] = safe_open(path, framework="pt")
    return handles["pt"].get_tensor(name).float().numpy()

  return StateDict(specs, load, path)


def read(path: str | os.PathLike) -> StateDict:
  """A checkpoint file (.safetensors, or a .pth/.bin/.pt pickle) -> StateDict; reads no tensor yet."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"checkpoint not found: {path}")
  try:
    return _read_safetensors(path) if path.endswith(".safetensors") else _read_torch(path)
  except ReadError:
    raise
  except Exception as e:  # corrupt or foreign file: name it rather than show a library traceback
    raise ReadError(f"cannot read {path}: {_first_line(e)}") from None


def merge(parts: Sequence[StateDict], where: str) -> StateDict:
  """One StateDict over several (the shards of one checkpoint); a name in two parts is an error."""
  owner: dict[str, StateDict] = {}
  twice = []
  for part in parts:
    for name in part:
      if name in owner:
        twice.append(f"{name} ({owner[name].where} and {part.where})")
      owner[name] = part
  if twice:
    raise ReadError(f"{where}: tensors stored twice: {', '.join(sorted(twice))}")
  specs = {name: (part.shape(name), part.dtype(name)) for name, part in owner.items()}
  return StateDict(specs, lambda name: owner[name][name], where)


def weight_files(directory: str, names: Sequence[str] = HF_WEIGHT_FILES) -> list[str]:
  """A Hugging Face directory's weight files: the first of `names` present, or the shards its
  ``<name>.index.json`` lists; [] if there are none."""
  for name in names:
    index = os.path.join(directory, name + ".index.json")
    if os.path.isfile(index):
      try:
        with open(index) as f:
          shards = sorted(set(json.load(f)["weight_map"].values()))
      except (OSError, ValueError, KeyError, AttributeError) as e:
        raise ReadError(f"cannot read {index}: {_first_line(e)}") from None
      return [os.path.join(directory, s) for s in shards]
    if os.path.isfile(os.path.join(directory, name)):
      return [os.path.join(directory, name)]
  return []


def read_dir(directory: str | os.PathLike, names: Sequence[str] = HF_WEIGHT_FILES) -> StateDict:
  """The weights of a Hugging Face directory (one file or shards) -> StateDict."""
  directory = os.fspath(directory)
  files = weight_files(directory, names)
  if not files:
    raise FileNotFoundError(f"{directory} has none of {', '.join(names)} (nor their .index.json)")
  parts = [read(f) for f in files]
  return parts[0] if len(parts) == 1 else merge(parts, directory)
