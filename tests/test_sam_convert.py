"""Strict conversion of official SAM checkpoints, the converter CLI and the weights round trip."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from jaxris.weights import sam as sam_weights
from jaxris.weights import store
from jaxris.weights.mapping import ConversionError
from sam_fixtures import official_sam

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def state_dict():
  model = official_sam(embed_dim=64, depth=2, num_heads=2, global_attn_indexes=(1,), img_size=256, seed=5)
  return {k: v.numpy() for k, v in model.state_dict().items()}


def test_config_inferred_from_shapes(state_dict):
  cfg = sam_weights.infer_config(state_dict)
  enc = cfg.encoder
  assert (enc.embed_dim, enc.depth, enc.num_heads, enc.img_size, enc.window_size) == (64, 2, 2, 256, 14)
  assert tuple(enc.global_attn_indexes) == (1,)


@pytest.mark.parametrize("variant,width,depth,heads,globals_", [
    ("vit_b", 768, 12, 12, (2, 5, 8, 11)), ("vit_l", 1024, 24, 16, (5, 11, 17, 23)),
    ("vit_h", 1280, 32, 16, (7, 15, 23, 31))])
def test_official_variants_inferred(variant, width, depth, heads, globals_):
  # Shapes only (no values): the keys and shapes an official checkpoint of each size has.
  from segment_anything import sam_model_registry
  with torch.device("meta"):
    model = sam_model_registry[variant](checkpoint=None)
  shapes = {k: np.empty(v.shape, np.float32) if v.ndim < 2 else np.lib.stride_tricks.as_strided(
      np.zeros(1, np.float32), v.shape, [0] * v.ndim) for k, v in model.state_dict().items()}
  cfg = sam_weights.infer_config(shapes)
  assert cfg == sam_weights.sam_config(variant)
  assert (cfg.encoder.embed_dim, cfg.encoder.depth, cfg.encoder.num_heads) == (width, depth, heads)
  assert tuple(cfg.encoder.global_attn_indexes) == globals_


def test_missing_extra_and_misshaped_are_all_named(state_dict):
  sd = dict(state_dict)
  del sd["mask_decoder.iou_token.weight"]
  del sd["image_encoder.blocks.0.attn.proj.bias"]
  sd["mask_decoder.extra_head.weight"] = np.zeros((3, 3), np.float32)
  sd["prompt_encoder.no_mask_embed.weight"] = np.zeros((1, 255), np.float32)
  with pytest.raises(ConversionError) as info:
    sam_weights.convert_state_dict(sd)
  msg = str(info.value)
  for name in ["mask_decoder.iou_token.weight", "image_encoder.blocks.0.attn.proj.bias",
               "mask_decoder.extra_head.weight", "prompt_encoder.no_mask_embed.weight"]:
    assert name in msg, f"{name} not named in:\n{msg}"
  assert "2 missing" in msg and "1 unexpected" in msg and "1 with the wrong shape" in msg


@pytest.mark.parametrize("problem", ["missing", "extra", "shape"])
def test_each_problem_alone_fails(state_dict, problem):
  sd = dict(state_dict)
  if problem == "missing":
    sd.pop("image_encoder.neck.1.weight")
    expected = "image_encoder.neck.1.scale"  # missing parameters are named as the model calls them
  elif problem == "extra":
    sd["image_encoder.blocks.0.attn.extra"] = np.zeros(3, np.float32)
    expected = "image_encoder.blocks.0.attn.extra"
  else:
    sd["image_encoder.blocks.1.mlp.lin1.weight"] = np.zeros((5, 64), np.float32)
    expected = "image_encoder.blocks.1.mlp.lin1.weight"
  with pytest.raises(ConversionError, match=expected.replace(".", r"\.")):
    sam_weights.convert_state_dict(sd)


def test_not_a_sam_checkpoint():
  with pytest.raises(ConversionError, match="not a Segment Anything checkpoint"):
    sam_weights.convert_state_dict({"encoder.weight": np.zeros((2, 2), np.float32)})


def test_cli_converts_pth_and_round_trips(state_dict, tmp_path):
  src = tmp_path / "sam_small.pth"
  torch.save({k: torch.from_numpy(v) for k, v in state_dict.items()}, src)
  out = tmp_path / "converted"
  run = subprocess.run([sys.executable, os.path.join(REPO, "convert", "sam.py"), "--src", str(src), "--out", str(out)],
                       capture_output=True, text=True)
  assert run.returncode == 0, run.stderr
  assert "2 blocks x 64 wide" in run.stdout
  model = sam_weights.load(str(out))
  params = store.flat_params(model)
  np.testing.assert_array_equal(np.asarray(params["image_encoder.pos_embed"]), state_dict["image_encoder.pos_embed"])
  np.testing.assert_array_equal(np.asarray(params["mask_decoder.transformer.layers.0.self_attn.q_proj.kernel"]),
                                state_dict["mask_decoder.transformer.layers.0.self_attn.q_proj.weight"].T)
  np.testing.assert_array_equal(
      np.asarray(params["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"]),
      state_dict["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"])


def test_cli_reports_bad_checkpoint(state_dict, tmp_path):
  sd = dict(state_dict)
  del sd["mask_decoder.mask_tokens.weight"]
  src = tmp_path / "broken.pth"
  torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, src)
  run = subprocess.run([sys.executable, os.path.join(REPO, "convert", "sam.py"), "--src", str(src), "--out",
                        str(tmp_path / "o")], capture_output=True, text=True)
  assert run.returncode == 2
  assert "mask_decoder.mask_tokens.weight" in run.stderr and "Traceback" not in run.stderr


def test_load_names_missing_directory(tmp_path):
  with pytest.raises(FileNotFoundError, match="convert/sam.py"):
    sam_weights.load(str(tmp_path / "nowhere"))


def test_converters_run_as_modules_and_by_path():
  # The CLIs ship in the package (python -m jaxris.convert.X); convert/ links to them for checkouts.
  assert os.path.realpath(os.path.join(REPO, "convert")) == os.path.join(REPO, "jaxris", "convert")
  for name in ("sam", "bert", "beit3", "evf_sam"):
    for how in (["-m", f"jaxris.convert.{name}"], [os.path.join(REPO, "convert", f"{name}.py")]):
      run = subprocess.run([sys.executable, *how, "--help"], capture_output=True, text=True, cwd="/")
      assert run.returncode == 0 and "--src" in run.stdout and "--out" in run.stdout, (how, run.stderr)
