"""The one checkpoint reader (jaxris.weights.reader), the streaming conversion and the streaming
safetensors writer: formats, wrappers, refusals, laziness, and the round trip through safetensors."""

import argparse
import json
import os

import ml_dtypes
import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import load_file
from safetensors.torch import save_file

from jaxris.weights import reader, store
from jaxris.weights.mapping import Rule, convert, linear_kernel


def tensors(seed=0):
  g = torch.Generator().manual_seed(seed)
  return {"enc.weight": torch.randn(3, 4, generator=g), "enc.bias": torch.randn(3, generator=g).half(),
          "table": torch.randn(2, 5, generator=g).bfloat16(), "ids": torch.arange(6).reshape(2, 3)}


def check(sd, expected):
  assert isinstance(sd, reader.StateDict) and set(sd) == set(expected)
  for k, v in expected.items():
    assert sd.shape(k) == tuple(v.shape)
    want = v.float().numpy() if v.is_floating_point() else v.numpy()
    assert sd.dtype(k) == want.dtype and sd[k].dtype == want.dtype
    np.testing.assert_array_equal(sd[k], want, err_msg=k)


def test_safetensors_are_read_lazily_as_float32(tmp_path):
  path = str(tmp_path / "model.safetensors")
  save_file(tensors(), path)
  sd = reader.read(path)
  check(sd, tensors())  # bf16 through torch, fp16 through numpy, ints kept
  stand_ins = sd.stand_ins()
  assert stand_ins["enc.weight"].shape == (3, 4) and stand_ins["enc.weight"].strides == (0, 0)


@pytest.mark.parametrize("zipped", [True, False], ids=["zip_mmap", "legacy"])
@pytest.mark.parametrize("wrapper", ["bare", "model_and_args", "ddp_training_dict", "module", "nested"])
def test_pickles_and_their_wrappers(tmp_path, zipped, wrapper):
  sd = tensors()
  optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(3))])
  checkpoint = {
      "bare": sd,
      "model_and_args": {"model": sd, "args": argparse.Namespace(lr=1e-3), "epoch": 2},  # unilm utils.save_model
      "ddp_training_dict": {"epoch": 1, "state_dict": {f"module.{k}": v for k, v in sd.items()},
                            "optimizer": optimizer.state_dict(), "lr": 1e-4},  # DIT train.py
      "module": {"module": sd},
      "nested": {"state_dict": {"model": {f"module.{k}": v for k, v in sd.items()}}},
  }[wrapper]
  path = str(tmp_path / "ckpt.pth")
  torch.save(checkpoint, path, _use_new_zipfile_serialization=zipped)
  check(reader.read(path), sd)
  check(reader.from_checkpoint(checkpoint), sd)  # the same rules for what torch.load returned


def test_refusals_name_the_file_and_every_entry(tmp_path):
  not_tensors = str(tmp_path / "mixed.pth")
  torch.save({"w": torch.zeros(2), "step": 3, "name": "x"}, not_tensors)
  with pytest.raises(reader.ReadError, match=r"mixed\.pth.*not tensors: name \(str\), step \(int\)"):
    reader.read(not_tensors)
  evil = str(tmp_path / "evil.pth")
  torch.save({"w": torch.zeros(2), "payload": os.getcwd}, evil)  # a function: not plain data
  with pytest.raises(reader.ReadError, match=r"evil\.pth.*weights_only=True") as e:
    reader.read(evil)
  assert e.value.__cause__ is None and "\n" not in str(e.value)
  corrupt = tmp_path / "corrupt.safetensors"
  corrupt.write_bytes(b"\x00" * 100)
  broken = tmp_path / "broken.pth"
  broken.write_bytes(b"PK\x03\x04 not really a zip")
  for path in (corrupt, broken):
    with pytest.raises(reader.ReadError, match=f"cannot read {path}"):
      reader.read(path)
  with pytest.raises(FileNotFoundError, match="nowhere.pth"):
    reader.read(tmp_path / "nowhere.pth")
  with pytest.raises(reader.ReadError, match="not a state_dict"):
    reader.from_checkpoint([torch.zeros(1)])


def test_hugging_face_shards(tmp_path):
  sd = tensors()
  names = sorted(sd)
  files = {"a.safetensors": names[:2], "b.safetensors": names[2:]}
  for file, keys in files.items():
    save_file({k: sd[k] for k in keys}, str(tmp_path / file))
  (tmp_path / "model.safetensors.index.json").write_text(
      json.dumps({"weight_map": {k: f for f, keys in files.items() for k in keys}}))
  check(reader.read_dir(tmp_path), sd)
  save_file({names[0]: sd[names[0]]}, str(tmp_path / "b.safetensors"))  # the same name in two shards
  with pytest.raises(reader.ReadError, match=f"stored twice: {names[0]}"):
    reader.read_dir(tmp_path)
  with pytest.raises(FileNotFoundError, match="model.safetensors"):
    reader.read_dir(tmp_path / "a.safetensors.d")


class Counting(reader.StateDict):
  """A StateDict that counts how often each tensor is read."""

  def __init__(self, arrays):
    self.reads = {k: 0 for k in arrays}

    def load(k):
      self.reads[k] += 1
      return arrays[k]

    super().__init__({k: (v.shape, v.dtype) for k, v in arrays.items()}, load, "counting")


def test_conversion_streams_one_tensor_at_a_time(tmp_path):
  rng = np.random.default_rng(0)
  source = Counting({f"l{i}.weight": rng.standard_normal((4, 3 + i)).astype(np.float32) for i in range(3)})
  rules = [Rule(r"l(\d)\.weight", r"l\1.kernel", linear_kernel)]
  params = convert(source, rules, {f"l{i}.kernel": (3 + i, 4) for i in range(3)})
  assert set(source.reads.values()) == {0}  # every check ran on names and shapes alone
  store.save(str(tmp_path), "test", {}, params)
  assert set(source.reads.values()) == {1}  # read once each, while writing
  loaded = store.load(str(tmp_path), "test")[1]
  for i in range(3):
    np.testing.assert_array_equal(loaded[f"l{i}.kernel"], source[f"l{i}.weight"].T)


def test_streaming_writer_round_trip(tmp_path):
  rng = np.random.default_rng(1)
  params = {"transposed": rng.standard_normal((5, 7)).astype(np.float32).T, "scalar": np.float32(2.5),
            "ids": np.arange(4, dtype=np.int64), "flags": np.array([True, False]),
            "empty": np.zeros((0, 3), np.float16), "half": rng.standard_normal(6).astype(np.float16)}
  path = str(tmp_path / "p.safetensors")
  store.write_safetensors(path, params)
  loaded = load_file(path)  # safetensors' own reader
  assert loaded.keys() == params.keys()
  for k, v in params.items():
    assert loaded[k].dtype == np.asarray(v).dtype and loaded[k].shape == np.shape(v), k
    np.testing.assert_array_equal(loaded[k], v, err_msg=k)
  with open(path, "rb") as f:
    assert int.from_bytes(f.read(8), "little") % 8 == 0  # data aligned as safetensors' own writer does
  bf16 = np.array([1.5, -2.0], ml_dtypes.bfloat16)  # exported bf16 parameters (jax's numpy type)
  store.write_safetensors(path, {"b": bf16})
  with safe_open(path, framework="pt") as f:
    assert f.get_tensor("b").tolist() == [1.5, -2.0] and str(f.get_tensor("b").dtype) == "torch.bfloat16"


def test_a_failed_write_leaves_no_file(tmp_path):
  def load(name):
    raise OSError("disk gone")

  broken = reader.StateDict({"a": ((2,), np.dtype(np.float32))}, load, "broken.pth")
  with pytest.raises(reader.ReadError, match="cannot read a from broken.pth: OSError: disk gone"):
    store.save(str(tmp_path / "out"), "test", {}, broken)
  assert os.listdir(tmp_path / "out") == []
