"""Converted weights on disk: ``DIR/config.json`` + ``DIR/params.safetensors``.

The format needs neither PyTorch nor pickles. ``config.json`` records the model family and
the constructor arguments; parameter names are the dotted Flax NNX paths of the model.

``params.safetensors`` is written one tensor at a time (safetensors' own ``save_file`` builds the
whole file in memory first): the header, whose sizes and offsets are known from the shapes, then
each tensor's bytes. With the lazy mappings of jaxris.weights.mapping.convert, a conversion thus
holds one converted tensor at a time, however large the checkpoint.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any, Mapping

import numpy as np
import tqdm
from safetensors.numpy import load_file

# The model-state helpers live with the models; converters reach them through this module too.
from jaxris.models.functional import WEIGHTS, assign_params, flat_params, param_shapes, path_name  # noqa: F401
from jaxris.weights import reader

CONFIG_FILE = "config.json"
PARAMS_FILE = "params.safetensors"


# numpy dtype name -> safetensors dtype code (bfloat16: ml_dtypes' numpy type, as jax hands it out)
_CODES = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64", "int32": "I32",
          "int16": "I16", "int8": "I8", "uint64": "U64", "uint32": "U32", "uint16": "U16", "uint8": "U8",
          "bool": "BOOL", "complex64": "C64"}


def _spec(params: Mapping[str, Any], name: str) -> tuple[tuple[int, ...], np.dtype]:
  if isinstance(params, reader.StateDict):  # lazy: known without reading the tensor
    return params.shape(name), params.dtype(name)
  value = np.asarray(params[name])
  return tuple(value.shape), value.dtype


def write_safetensors(path: str, params: Mapping[str, Any], progress: bool = False) -> None:
  """Writes `params` (arrays, or a lazy reader.StateDict) to a .safetensors file, one tensor at a time.

  The file appears complete or not at all (written to ``path + ".tmp"``, then renamed).
  """
  names = list(params)
  specs = [_spec(params, k) for k in names]
  header, offset = {}, 0
  for name, (shape, dtype) in zip(names, specs):
    if dtype.name not in _CODES:
      raise ValueError(f"{name}: dtype {dtype} cannot be stored in safetensors")
    size = int(np.prod(shape)) * dtype.itemsize
    header[name] = {"dtype": _CODES[dtype.name], "shape": list(shape), "data_offsets": [offset, offset + size]}
    offset += size
  encoded = json.dumps(header, separators=(",", ":")).encode()
  encoded += b" " * (-len(encoded) % 8)  # the format allows trailing spaces; aligns the data to 8 bytes
  tmp = path + ".tmp"
  try:
    with open(tmp, "wb") as f, tqdm.tqdm(total=offset, unit="B", unit_scale=True, desc=f"writing {path}",
                                         disable=not progress) as bar:
      f.write(struct.pack("<Q", len(encoded)))
      f.write(encoded)
      for name, (shape, dtype) in zip(names, specs):
        value = np.require(params[name], dtype.newbyteorder("<"), "C")  # one tensor held at a time
        if tuple(value.shape) != shape:
          raise ValueError(f"{name}: got shape {tuple(value.shape)}, announced {shape}")
        f.write(value.reshape(-1).view(np.uint8).data)  # the bytes, without a copy (any dtype, any rank)
        bar.update(value.nbytes)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def save(directory: str, family: str, config: dict, params: Mapping[str, Any], progress: bool = False) -> None:
  """Writes DIR/params.safetensors (streamed, see write_safetensors) and DIR/config.json."""
  os.makedirs(directory, exist_ok=True)
  write_safetensors(os.path.join(directory, PARAMS_FILE), params, progress)
  with open(os.path.join(directory, CONFIG_FILE), "w") as f:
    json.dump({"family": family, "config": config}, f, indent=2, sort_keys=True)


def load(directory: str, family: str | None = None) -> tuple[dict, dict[str, np.ndarray]]:
  """Returns (config, params). Fails with the missing path named."""
  cfg_path = os.path.join(directory, CONFIG_FILE)
  params_path = os.path.join(directory, PARAMS_FILE)
  for p in (cfg_path, params_path):
    if not os.path.isfile(p):
      raise FileNotFoundError(
          f"{p} not found: {directory} is not a converted jaxris weights directory "
          "(make one with the converters in convert/, e.g. python convert/sam.py --src X.pth --out DIR)")
  with open(cfg_path) as f:
    meta = json.load(f)
  if family is not None and meta.get("family") != family:
    raise ValueError(f"{directory} holds '{meta.get('family')}' weights, expected '{family}'")
  return meta["config"], load_file(params_path)
