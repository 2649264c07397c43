"""MobileSAM's TinyViT image encoder against the official mobile_sam code (random weights), and its converter."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from mobile_sam.modeling.tiny_vit_sam import Attention as OfficialAttention

from jaxris.models.sam.sam import SamConfig
from jaxris.models.sam.tiny_vit import TinyViTConfig, attention_bias_idxs
from jaxris.weights import sam as sam_weights
from jaxris.weights import store
from jaxris.weights.mapping import ConversionError
from mobile_sam_fixtures import encoder_from_torch, official_features, official_mobile_sam, official_tiny_vit
from parity import assert_close
from sam_fixtures import nchw, nhwc

jax.config.update("jax_default_matmul_precision", "highest")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@nnx.jit
def _encode(encoder, x):
  return encoder(x)


@pytest.mark.parametrize("size", [(224, 224), (256, 320)])
def test_encoder_parity(size):
  # 224: every grid is whole windows (56 -> 28 in 7s, 14 = one window of 14: the official unpadded
  # branch, 14 in 7s). 256 x 320: non-square, and every attention stage pads (32x40 in windows of 7,
  # 16x20 in windows of 14 and of 7). Batch of two.
  official = official_tiny_vit(size, seed=1)
  x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(2))
  ref = official_features(official, x)
  ours = nchw(_encode(encoder_from_torch(official), jnp.asarray(nhwc(x))))
  err = assert_close(ours, ref, what=f"TinyViT embedding at {size}")
  print(f"\nTinyViT at {size[0]}x{size[1]}, random weights: max abs error {err:.2e} of scale")


@pytest.mark.parametrize("window", [7, 14])
def test_attention_bias_index_table(window):
  official = OfficialAttention(32, 16, 2, attn_ratio=1, resolution=(window, window))
  np.testing.assert_array_equal(attention_bias_idxs(window), official.attention_bias_idxs.numpy())


@pytest.fixture(scope="module")
def state_dict():
  return {k: v.numpy() for k, v in official_mobile_sam(seed=4).state_dict().items()}


def test_config_inferred_from_shapes(state_dict):
  cfg = sam_weights.infer_config(state_dict)
  assert cfg == sam_weights.sam_config("vit_t")
  assert cfg.encoder == TinyViTConfig() and cfg.encoder.grid == 64


def test_every_tensor_used_or_ignored_by_name(state_dict):
  cfg, params = sam_weights.convert_state_dict(state_dict)
  params = dict(params)
  ignored = [k for k in state_dict if k.endswith("num_batches_tracked") or ".norm_head." in k or ".head." in k]  # 27 Conv2d_BN, classifier
  assert len(ignored) == 27 + 4 and len(params) == len(state_dict) - len(ignored)
  bn = "image_encoder.layers.0.blocks.1.conv2.bn"  # batch norm: running statistics carried over
  for src, dst in [("weight", "scale"), ("bias", "bias"), ("running_mean", "mean"), ("running_var", "var")]:
    np.testing.assert_array_equal(params[f"{bn}.{dst}"], state_dict[f"{bn}.{src}"])
  conv = "image_encoder.layers.0.blocks.1.conv2.c"  # depthwise: (C, 1, 3, 3) -> (3, 3, 1, C)
  np.testing.assert_array_equal(params[f"{conv}.kernel"], state_dict[f"{conv}.weight"].transpose(2, 3, 1, 0))
  table = "image_encoder.layers.2.blocks.3.attn.attention_biases"
  np.testing.assert_array_equal(params[table], state_dict[table])
  assert params[table].shape == (5, 196)


def test_missing_extra_and_misshaped_are_all_named(state_dict):
  sd = dict(state_dict)
  del sd["image_encoder.layers.1.downsample.conv2.bn.running_var"]
  del sd["image_encoder.layers.3.blocks.1.attn.attention_biases"]
  sd["image_encoder.layers.2.blocks.0.attn.extra"] = np.zeros((3,), np.float32)
  sd["image_encoder.layers.2.blocks.0.attn.attention_biases"] = np.zeros((5, 195), np.float32)
  with pytest.raises(ConversionError) as info:
    sam_weights.convert_state_dict(sd)
  msg = str(info.value)
  for name in ["image_encoder.layers.1.downsample.conv2.bn.var", "image_encoder.layers.3.blocks.1.attn.attention_biases",
               "image_encoder.layers.2.blocks.0.attn.extra", "image_encoder.layers.2.blocks.0.attn.attention_biases"]:
    assert name in msg, f"{name} not named in:\n{msg}"
  assert "2 missing" in msg and "1 unexpected" in msg and "1 with the wrong shape" in msg


def test_convert_cli_and_weights_directory_round_trip(tmp_path):
  model = official_mobile_sam(seed=6)
  src, out = str(tmp_path / "mobile_sam.pt"), str(tmp_path / "weights")
  torch.save(model.state_dict(), src)
  run = subprocess.run([sys.executable, os.path.join(REPO, "convert", "sam.py"), "--src", src, "--out", out],
                       capture_output=True, text=True, cwd=str(tmp_path))
  assert run.returncode == 0, run.stderr
  with open(os.path.join(out, store.CONFIG_FILE)) as f:
    meta = json.load(f)
  assert meta["family"] == "sam" and meta["config"]["encoder"]["embed_dims"] == [64, 128, 160, 320]
  # What jaxris.weights.sam.load reads (it then builds Sam: test_mobile_sam.py loads the real weights so).
  cfg, got = store.load(out, sam_weights.FAMILY)
  assert SamConfig.from_dict(cfg) == sam_weights.sam_config("vit_t")
  _, expected = sam_weights.convert_state_dict({k: v.numpy() for k, v in model.state_dict().items()})
  assert got.keys() == dict(expected).keys()
  for k, v in dict(expected).items():
    np.testing.assert_array_equal(np.asarray(got[k]), v, err_msg=k)
