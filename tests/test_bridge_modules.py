"""The bridge's feature modules against the clean-room PyTorch reference (tests/bridge_reference.py).

Parity runs at reduced widths and grids with every reference tensor randomised (norm scales,
level_embed and the offset biases included); parameter counts are checked at full size against
the spec's table (shared/specs/bridge.md §7), building the Flax modules abstractly.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import bridge_reference as ref
from jaxris.models.ris.bridge.common import conv2d
from jaxris.models.ris.bridge.pixel_decoder import MSDeformAttn, PixelDecoder
from jaxris.models.ris.bridge.position import sine_position_encoding
from jaxris.models.ris.bridge.pwam import MMLayer, PWAM
from jaxris.models.ris.bridge.pyramids import SimpleFeaturePyramid, clip_pyramid, sam_pyramid
from jaxris.models.ris.bridge.txt2txt import Txt2txt, text_projection
from jaxris.weights.random_torch import randomize_
from parity import assert_close


def _nhwc(t: torch.Tensor) -> jnp.ndarray:
  return jnp.asarray(t.permute(0, 2, 3, 1).numpy())


def _nchw(x) -> np.ndarray:
  return np.asarray(x).transpose(0, 3, 1, 2)


def _count(build) -> int:
  model = nnx.eval_shape(build)
  return sum(int(np.prod(v.shape)) for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param)))


def _load(build, torch_module, family):
  """The Flax module built abstractly (eager initialisation is slow on CPU), then filled with the reference's weights."""
  return ref.load_into(nnx.eval_shape(build), torch_module, family)


def _torch_count(module) -> int:
  return sum(p.numel() for p in module.parameters())


# ------------------------------------------------------------------------------------------
# Parameter counts (full size).

_SPEC_COUNTS = {
    "pwam": (787_968, lambda: PWAM(1024, 256, 256, rngs=nnx.Rngs(0))),
    "clip_sfp": (16_557_184, lambda: clip_pyramid(rngs=nnx.Rngs(0))),
    "sam_sfp": (1_969_152, lambda: sam_pyramid(rngs=nnx.Rngs(0))),
    "pixel_decoder": (7_414_208, lambda: PixelDecoder(rngs=nnx.Rngs(0))),
    "txt2txt": (789_760, lambda: Txt2txt(rngs=nnx.Rngs(0))),
    "lang_mlp": (196_864, lambda: text_projection(768, 256, rngs=nnx.Rngs(0))),
}


@pytest.mark.parametrize("name", list(_SPEC_COUNTS))
def test_parameter_counts_match_the_spec(name):
  expected, build = _SPEC_COUNTS[name]
  assert _count(build) == expected


def test_reference_counts_match_the_spec():
  # The reference is what the parity tests trust; its full-size modules must have the spec's sizes too.
  assert _torch_count(ref.MMLayerRef()) == 787_968
  assert _torch_count(ref.SimpleFeaturePyramidRef(256, 768, (2.0, 1.0, 0.5), 14)) == 16_557_184
  assert _torch_count(ref.SimpleFeaturePyramidRef(256, 256, (1.0, 0.5, 0.25), 16)) == 1_969_152
  assert _torch_count(ref.PixelDecoderRef()) == 7_414_208
  assert _torch_count(ref.Txt2txtRef()) == 789_760


# ------------------------------------------------------------------------------------------
# Shared pieces.


@pytest.mark.parametrize("hw", [(12, 12), (48, 48), (5, 9)])
def test_sine_position_encoding(hw):
  expected = ref.sine_position_ref(*hw)[0].permute(1, 2, 0)
  ours = sine_position_encoding(*hw)
  assert ours.shape == (*hw, 256)
  assert_close(ours, expected, tol=1e-6)


# ------------------------------------------------------------------------------------------
# PWAM.


def _pwam_inputs(b=2, side=6, v_in=64, t=7, l_in=32, seed=0):
  g = torch.Generator().manual_seed(seed)
  x = torch.randn(b, side * side, v_in, generator=g)
  l = torch.randn(b, t, l_in, generator=g)
  mask = torch.ones(b, t)
  mask[0, 4:] = 0  # padded words in the batch
  return x, l, mask


def test_pwam_matches_reference():
  torch.manual_seed(0)
  r = randomize_(ref.MMLayerRef(64, 32, 48), seed=1, std=0.2)
  model = _load(lambda: MMLayer(64, 32, 48, rngs=nnx.Rngs(0)), r, "pwam")
  x, l, mask = _pwam_inputs()
  with torch.no_grad():
    expected = r(x, l.permute(0, 2, 1), mask[:, :, None])
  ours = nnx.jit(lambda m, *a: m(*a))(model, jnp.asarray(x.numpy()), jnp.asarray(l.numpy()), jnp.asarray(mask.numpy()))
  assert ours.shape == (2, 6, 6, 48)
  assert_close(_nchw(ours), expected, what="PWAM")
  # Padded words are ignored: changing them leaves sample 0 unchanged.
  l2 = l.clone()
  l2[0, 4:] = 100.0
  other = model(jnp.asarray(x.numpy()), jnp.asarray(l2.numpy()), jnp.asarray(mask.numpy()))
  np.testing.assert_allclose(other[0], ours[0], atol=1e-5)


# ------------------------------------------------------------------------------------------
# Simple feature pyramids.


@pytest.mark.parametrize("kind", ["clip", "sam"])
def test_pyramid_matches_reference(kind):
  in_dim, out_dim, scales, stride, side = {"clip": (32, 48, (2.0, 1.0, 0.5), 14, 6),
                                           "sam": (32, 32, (1.0, 0.5, 0.25), 16, 16)}[kind]
  torch.manual_seed(0)
  r = randomize_(ref.SimpleFeaturePyramidRef(in_dim, out_dim, scales, stride), seed=2, std=0.2)
  model = _load(lambda: SimpleFeaturePyramid(in_dim, out_dim, scales, stride, rngs=nnx.Rngs(0)), r, "sfp")
  x = torch.randn(2, in_dim, side, side, generator=torch.Generator().manual_seed(3))
  with torch.no_grad():
    expected = r(x)
  ours = nnx.jit(lambda m, a: m(a))(model, _nhwc(x))
  names = {"clip": ["p2", "p3", "p4"], "sam": ["p4", "p5", "p6"]}[kind]
  assert list(ours) == list(expected) == names
  for name in names:
    assert_close(_nchw(ours[name]), expected[name], what=f"{kind} {name}")


def test_full_size_pyramid_shapes():
  clip = nnx.eval_shape(lambda: clip_pyramid(rngs=nnx.Rngs(0)))
  sam = nnx.eval_shape(lambda: sam_pyramid(rngs=nnx.Rngs(0)))
  c = jax.eval_shape(lambda m, x: m(x), clip, jax.ShapeDtypeStruct((1, 24, 24, 256), jnp.float32))
  s = jax.eval_shape(lambda m, x: m(x), sam, jax.ShapeDtypeStruct((1, 64, 64, 256), jnp.float32))
  assert {k: v.shape for k, v in c.items()} == {"p2": (1, 48, 48, 768), "p3": (1, 24, 24, 768), "p4": (1, 12, 12, 768)}
  assert {k: v.shape for k, v in s.items()} == {"p4": (1, 64, 64, 256), "p5": (1, 32, 32, 256), "p6": (1, 16, 16, 256)}


# ------------------------------------------------------------------------------------------
# Pixel decoder (with multi-scale deformable attention).

_PD = dict(in_channels=(48, 40, 56), conv_dim=64, mask_dim=32, num_layers=2, num_heads=8, num_points=3, ffn_dim=96)
_PD_SIDES = (16, 8, 4)  # fine -> coarse


def _pixel_decoder_pair(seed=4):
  torch.manual_seed(0)
  r = randomize_(ref.PixelDecoderRef(**_PD), seed=seed, std=0.2)
  with torch.no_grad():  # larger offsets: many samples land between pixels of other rows and beyond the border
    for layer in r.transformer.encoder.layers:
      layer.self_attn.sampling_offsets.weight.mul_(10.0)
      layer.self_attn.sampling_offsets.bias.mul_(20.0)
  model = _load(lambda: PixelDecoder(**_PD, rngs=nnx.Rngs(0)), r, "pixel_decoder")
  g = torch.Generator().manual_seed(5)
  feats = [torch.randn(2, c, s, s, generator=g) for c, s in zip(_PD["in_channels"], _PD_SIDES)]
  return r, model, feats


def test_pixel_decoder_matches_reference():
  r, model, feats = _pixel_decoder_pair()
  with torch.no_grad():
    expected_dense, expected_ms = r(feats)
  dense, ms = nnx.jit(lambda m, f: m(f))(model, [_nhwc(f) for f in feats])
  assert dense.shape == (2, 16, 16, 32) and [m.shape[1] for m in ms] == [4, 8, 16]
  for i, (a, e) in enumerate(zip(ms, expected_ms)):
    assert_close(_nchw(a), e, what=f"multi-scale {i}")
  assert_close(_nchw(dense), expected_dense, what="p_dense")


def test_msdeform_attention_gradients_match_reference():
  # MSDA alone (compiling the decoder's gradient is slow on CPU): d/d(query, values, offset and
  # attention projections) against torch autograd through F.grid_sample.
  torch.manual_seed(0)
  shapes = [(4, 4), (8, 6), (16, 16)]
  r = randomize_(ref.MSDeformAttnRef(64, 3, 8, 3), seed=6, std=0.2)
  with torch.no_grad():
    r.sampling_offsets.weight.mul_(10.0)
    r.sampling_offsets.bias.mul_(20.0)
  model = _load(lambda: MSDeformAttn(64, 3, 8, 3, rngs=nnx.Rngs(0)), r, "pixel_decoder")
  g = torch.Generator().manual_seed(7)
  s = sum(h * w for h, w in shapes)
  query = torch.randn(2, s, 64, generator=g, requires_grad=True)
  value = torch.randn(2, s, 64, generator=g, requires_grad=True)
  cot = torch.randn(2, s, 64, generator=g)
  reference = ref.EncoderRef.reference_points(shapes, 2)
  out = r(query, reference, value, shapes)
  (out * cot).sum().backward()

  def loss(m, q, v):
    return jnp.sum(m(q, jnp.asarray(reference[0, :, 0].numpy()), v, shapes) * jnp.asarray(cot.numpy()))

  (grads, gq, gv) = nnx.jit(nnx.grad(loss, argnums=(0, 1, 2)))(model, jnp.asarray(query.detach().numpy()),
                                                               jnp.asarray(value.detach().numpy()))
  flat = {".".join(map(str, k)): v.get_value() for k, v in nnx.to_flat_state(grads)}
  assert all(np.all(np.isfinite(v)) for v in flat.values())
  assert np.abs(flat["sampling_offsets.kernel"]).max() > 0, "the sampling locations must receive gradients"
  assert_close(gq, query.grad, what="d/dquery")
  assert_close(gv, value.grad, what="d/dvalue")
  for name in ("sampling_offsets", "attention_weights", "value_proj", "output_proj"):
    lin = getattr(r, name)
    assert_close(flat[f"{name}.kernel"], lin.weight.grad.T, what=f"d/d{name}.weight")
    assert_close(flat[f"{name}.bias"], lin.bias.grad, what=f"d/d{name}.bias")


def test_initialisation():
  attn = nnx.jit(lambda: MSDeformAttn(64, 3, 8, 3, rngs=nnx.Rngs(0)))()
  r = ref.MSDeformAttnRef(64, 3, 8, 3)
  np.testing.assert_array_equal(attn.sampling_offsets.bias[...], r.sampling_offsets.bias.detach().numpy())
  assert not np.any(attn.sampling_offsets.kernel[...]) and not np.any(attn.attention_weights.kernel[...])
  assert not np.any(attn.attention_weights.bias[...]) and not np.any(attn.value_proj.bias[...])
  conv = nnx.jit(lambda: conv2d(64, 64, 3, init="c2_xavier", rngs=nnx.Rngs(0)))()
  bound = math.sqrt(3 / (64 * 9))  # detectron2's c2_xavier_fill of the FPN's 3x3 convs
  k = np.asarray(conv.kernel[...])
  assert np.abs(k).max() <= bound and np.abs(k).max() > 0.9 * bound and not np.any(conv.bias[...])
  lin = nnx.jit(lambda: text_projection(768, 256, rngs=nnx.Rngs(0)))()  # lang_mlp: PyTorch's default
  for p in (lin.kernel[...], lin.bias[...]):
    assert np.abs(p).max() <= 768 ** -0.5 and np.abs(p).max() > 0.9 * 768 ** -0.5


# ------------------------------------------------------------------------------------------
# Txt2txt.


def test_txt2txt_matches_reference():
  torch.manual_seed(0)
  r = randomize_(ref.Txt2txtRef(64, 8, 128), seed=8, std=0.2)
  model = _load(lambda: Txt2txt(64, 8, 128, rngs=nnx.Rngs(0)), r, "txt2txt")
  g = torch.Generator().manual_seed(9)
  q, tokens = torch.randn(3, 1, 64, generator=g), torch.randn(3, 11, 64, generator=g)
  with torch.no_grad():
    expected = r(q.transpose(0, 1), tokens.transpose(0, 1)).transpose(0, 1)
  ours = nnx.jit(lambda m, a, b: m(a, b))(model, jnp.asarray(q.numpy()), jnp.asarray(tokens.numpy()))
  assert ours.shape == (3, 1, 64)
  assert_close(ours, expected, what="Txt2txt")
