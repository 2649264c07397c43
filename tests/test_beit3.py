"""Parity of jaxris BEiT3 with torchscale's BEiT3 (random weights), and its own behaviour."""

import dataclasses
import warnings

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from parity import assert_close

with warnings.catch_warnings():  # torchscale/timm import-time deprecation noise
  warnings.simplefilter("ignore")
  from torchscale.architecture.config import EncoderConfig
  from torchscale.model.BEiT3 import BEiT3 as TorchBEiT3

from jaxris.models.beit3 import BEiT3, BEiT3Config
from jaxris.weights import beit3 as beit3_weights


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
  """The PyTorch oracle on one thread: on this shared 2-core machine a second thread mostly
  spin-waits (3x the CPU time for no gain in wall time). Restored afterwards."""
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)


def torch_config(cfg: BEiT3Config) -> EncoderConfig:
  """The official unilm config (_get_base_config / _get_large_config) with cfg's sizes."""
  return EncoderConfig(
      img_size=cfg.img_size, patch_size=cfg.patch_size, vocab_size=cfg.vocab_size, multiway=True,
      layernorm_embedding=False, normalize_output=True, no_output_layer=True, drop_path_rate=0.0,
      encoder_embed_dim=cfg.encoder_embed_dim, encoder_attention_heads=cfg.encoder_attention_heads,
      encoder_ffn_embed_dim=cfg.encoder_ffn_embed_dim, encoder_layers=cfg.encoder_layers,
      max_source_positions=cfg.max_source_positions)


def random_torch_model(cfg: BEiT3Config, seed: int = 0) -> TorchBEiT3:
  """torchscale BEiT3 at its own random init, with LayerNorms, biases and tokens moved off 1 / 0.

  The experts differ already: MultiwayNetwork re-initialises B after copying A. Only the small
  tensors are perturbed (a mapping that swapped a LayerNorm's weight and bias would pass
  at init values); the big weight matrices keep torch's init, which saves seconds at full size.
  """
  torch.manual_seed(seed)
  model = TorchBEiT3(torch_config(cfg)).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if p.ndim == 1 or "token" in name:
        p.add_(torch.randn_like(p) * 0.1)
  return model


def inputs(cfg: BEiT3Config, batch: int = 2, text_len: int = 9, seed: int = 0):
  """Images (NCHW for torch), token ids and a text mask with padding in every row but the first."""
  rng = np.random.default_rng(seed)
  images = rng.standard_normal((batch, cfg.in_chans, cfg.img_size, cfg.img_size)).astype(np.float32)
  ids = rng.integers(3, cfg.vocab_size, (batch, text_len))
  mask = np.ones((batch, text_len), np.int64)
  for i in range(1, batch):
    mask[i, text_len - 2 * i:] = 0
  ids[mask == 0] = 1  # the pad id, as the tokenizer writes it
  return images, ids, mask


# One jitted forward for every test: a whole-model compile is cheaper than op-by-op dispatch.
_forward = nnx.jit(lambda model, ids, images, mask, masked: model(ids, images, mask, vision_masked_position=masked))


def run_both(tm, jm, images, ids, mask, masked_position=None):
  """(jax, torch) outputs; any of images / ids may be None."""
  kw_t = {}
  if images is not None:
    kw_t["visual_tokens"] = torch.from_numpy(images)
    images = jnp.asarray(images.transpose(0, 2, 3, 1))
  if ids is not None:
    kw_t["textual_tokens"] = torch.from_numpy(ids)
    kw_t["text_padding_position"] = torch.from_numpy(mask == 0)
    ids, mask = jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32)
  if masked_position is not None:
    kw_t["vision_masked_position"] = torch.from_numpy(masked_position)
    masked_position = jnp.asarray(masked_position)
  with torch.no_grad():
    ref = tm(**kw_t)
  return _forward(jm, ids, images, mask if ids is not None else None, masked_position), ref


def check_modes(tm, jm, cfg, modes=("joint", "text only", "image only"), masked_position=None):
  images, ids, mask = inputs(cfg)
  cases = {"joint": ((images, ids), cfg.num_patches + 1), "text only": ((None, ids), 0),
           "image only": ((images, None), -1)}
  for name in modes:
    (im, tx), split = cases[name]
    masked = masked_position if im is not None else None
    out, ref = run_both(tm, jm, im, tx, mask, masked)
    assert out.multiway_split_position == ref["multiway_split_position"] == split, name
    assert_close(out.encoder_out, ref["encoder_out"], what=f"{name} encoder_out")


def test_base_full_size_matches_torchscale():
  cfg = BEiT3Config.base()
  tm = random_torch_model(cfg)
  jm = beit3_weights.from_torch(tm.state_dict())
  assert jm.config == cfg  # the variant is read back from the shapes
  # Joint input runs every part of the model (both experts, both position tables, padding);
  # the single-modality paths are checked on large below, to keep the test time down.
  check_modes(tm, jm, cfg, ("joint",))


def test_large_reduced_depth_matches_torchscale():
  cfg = BEiT3Config.large(encoder_layers=2)
  tm = random_torch_model(cfg, seed=1)
  jm = beit3_weights.from_torch(tm.state_dict())
  check_modes(tm, jm, cfg)


# A reduced BEiT-3 for the tests of our own behaviour (and the converter's), with the official
# head width of 64 so that the converter can infer the head count.
SMALL = BEiT3Config(encoder_embed_dim=128, encoder_attention_heads=2, encoder_ffn_embed_dim=256, encoder_layers=2,
                    vocab_size=60, img_size=32, max_source_positions=16)


@pytest.fixture(scope="module")
def small():
  """SMALL with torchscale weights."""
  cfg = SMALL
  tm = random_torch_model(cfg, seed=2)
  images, ids, mask = inputs(cfg)
  args = (jnp.asarray(ids, jnp.int32), jnp.asarray(images.transpose(0, 2, 3, 1)), jnp.asarray(mask))
  return cfg, tm, beit3_weights.from_torch(tm.state_dict()), args


def test_masked_image_positions_match_torchscale(small):
  """BEiT's masked-image-modeling input: mask tokens in place of some patches."""
  cfg, tm, jm, _ = small
  masked = np.random.default_rng(2).random((2, cfg.num_patches)) < 0.4
  masked[:, 0] = True
  check_modes(tm, jm, cfg, ("joint",), masked_position=masked)


def test_padding_does_not_change_real_tokens(small):
  """Extra padding is masked: real tokens (and the vision [CLS]) see the same keys."""
  _, _, jm, (ids, images, mask) = small
  short = _forward(jm, ids, images, mask, None).encoder_out
  pad = jnp.ones((2, 3), jnp.int32)
  longer = _forward(jm, jnp.concatenate([ids, pad], 1), images, jnp.concatenate([mask, 0 * pad], 1), None)
  assert_close(longer.encoder_out[:, :short.shape[1]], short, tol=1e-5, what="real tokens with more padding")


def test_bf16_compute(small):
  _, tm, jm, args = small
  jitted = _forward(jm, *args, None)
  bf16 = beit3_weights.from_torch(tm.state_dict(), dtype=jnp.bfloat16)
  assert bf16.encoder.layers[0].ffn.A.fc1.kernel.get_value().dtype == jnp.float32  # params stay fp32
  out = _forward(bf16, *args, None)
  assert out.encoder_out.dtype == jnp.bfloat16
  assert_close(out.encoder_out, jitted.encoder_out, tol=5e-2, what="bf16 compute")


def test_drop_path_only_in_training_mode(small):
  cfg, tm, jm, args = small
  _, params = beit3_weights.convert_state_dict(tm.state_dict(), prefix="", ignore=())
  model = beit3_weights.build(dataclasses.replace(cfg, drop_path_rate=0.5), params)
  rates = [layer.drop_path.rate for layer in model.encoder.layers]
  assert rates == [0.0, 0.5]  # torchscale's linspace(0, rate, depth)
  x = jnp.ones((4, 3, 8))
  np.testing.assert_array_equal(model.encoder.layers[1].drop_path(x), x)  # eval mode, the default
  model.train()
  run = nnx.jit(lambda m, rngs: m(*args, rngs=rngs).encoder_out)
  c, d = run(model, nnx.Rngs(dropout=1)), run(model, nnx.Rngs(dropout=2))
  assert not np.allclose(c, d) and not np.allclose(_forward(jm, *args, None).encoder_out, c)
  assert np.all(np.isfinite(np.asarray(c)))
  dropped = model.encoder.layers[1].drop_path(jnp.ones((64, 3, 8)), rngs=nnx.Rngs(dropout=0))
  per_sample = np.asarray(dropped).reshape(64, -1)
  assert np.all(per_sample.min(1) == per_sample.max(1))  # whole samples dropped or scaled by 1/(1-p)
  assert set(np.unique(per_sample)) == {0.0, 2.0}


def test_bad_inputs_are_refused(small):
  _, _, model, (ids, images, mask) = small
  with pytest.raises(ValueError, match="text_ids, images or both"):
    model()
  with pytest.raises(ValueError, match="NHWC"):
    model(images=images.transpose(0, 3, 1, 2))  # NCHW by mistake
  with pytest.raises(ValueError, match="exceeds"):
    model(jnp.ones((2, 15), jnp.int32))  # 15 + 2 > 16 positions
  with pytest.raises(ValueError, match="text_mask shape"):
    model(ids, text_mask=mask[:, :4])
  with pytest.raises(ValueError, match="batch sizes"):
    model(ids[:1], images)
  with pytest.raises(ValueError, match="vision_masked_position"):
    model(ids, images, vision_masked_position=jnp.zeros((2, 3)))


def test_all_padding_row_stays_finite(small):
  """torchscale gives NaN for a text-only row with no real token; we give finite numbers."""
  _, _, model, (ids, _, mask) = small
  out = _forward(model, ids, None, mask.at[1].set(0), None)
  assert np.all(np.isfinite(np.asarray(out.encoder_out)))


def test_init_follows_the_official_wrapper():
  """BEiT3Wrapper's init: Linear N(0, 0.02) truncated at +-0.02, zero bias; LN ones; tokens zero."""
  # One width everywhere (few distinct shapes: each costs an RNG compile), 64x64 samples per table.
  cfg = BEiT3Config(encoder_embed_dim=64, encoder_attention_heads=2, encoder_ffn_embed_dim=64, encoder_layers=1,
                    vocab_size=64, img_size=32, max_source_positions=64)
  model = BEiT3(cfg, rngs=nnx.Rngs(0))
  k = np.asarray(model.encoder.layers[0].self_attn.v_proj.B.kernel.get_value())
  assert np.abs(k).max() <= 0.02 and 0.01 < k.std() < 0.02  # no subln gain (see the model's comment)
  assert not np.any(np.asarray(model.encoder.layers[0].ffn.A.fc2.bias.get_value()))
  np.testing.assert_array_equal(model.encoder.layer_norm.B.scale.get_value(), 1.0)
  assert not np.any(np.asarray(model.vision_embed.cls_token.get_value()))
  assert abs(np.asarray(model.text_embed.embedding.get_value()).std() - 64**-0.5) < 0.01
  assert abs(np.asarray(model.encoder.embed_positions.B.embedding.get_value()).std() - 1.0) < 0.05
