"""The bridge's two simple feature pyramids (ViTDet's SimpleFeaturePyramid; spec §4.2), NHWC.

One stride-14 map of PWAM-fused CLIP features and SAM's stride-16 embedding each become three
scales for the pixel decoder and DFAM. A stage is an optional resampling (ConvTranspose 2x2
for x2, max pooling for /2 and /4), then Conv1x1 -> LN -> Conv3x3 -> LN, both convolutions
without bias and nothing non-linear in between; LN is detectron2's channel LayerNorm (eps
1e-6, affine), which on NHWC is a LayerNorm over the last axis. Initialisation is PyTorch's
default (the official code calls none).

Stages are named as detectron2 names them, ``simfp_{int(log2(stride))}`` (CLIP: strides 7, 14,
28 -> ``simfp_2/3/4``; SAM: 16, 32, 64 -> ``simfp_4/5/6``), and the outputs ``p{same}``. Inside a
stage: ``up`` (the official index 0 of a x2 stage), ``conv_1x1`` / ``norm_1x1`` and ``conv_3x3`` /
``norm_3x3`` (the official next two indices and their ``.norm``).
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxris.models.layers import layer_norm
from jaxris.models.ris.bridge.common import conv2d, max_pool
from jaxris.models.sam.common import ConvTranspose2x2


class SFPStage(nnx.Module):
  """One pyramid level: resample by `scale` (2, 1, 1/2, 1/4 or 1/8), then the two conv+LN."""

  def __init__(self, in_dim: int, out_dim: int, scale: float, *, rngs: nnx.Rngs, dtype=None):
    self.pool = 1
    up = None
    dim = in_dim
    if scale == 2.0:
      up = ConvTranspose2x2(in_dim, in_dim // 2, rngs=rngs, dtype=dtype)
      bound = 1.0 / (in_dim // 2 * 4) ** 0.5  # PyTorch's default ConvTranspose2d bias, U(+-1/sqrt(fan_in))
      up.bias[...] = jax.random.uniform(rngs.params(), (in_dim // 2,), jnp.float32, -bound, bound)
      dim = in_dim // 2
    elif scale in (0.5, 0.25, 0.125):
      self.pool = int(round(1 / scale))
    elif scale != 1.0:
      raise NotImplementedError(f"scale factor {scale} is not supported")
    self.up = up
    self.conv_1x1 = conv2d(dim, out_dim, 1, use_bias=False, rngs=rngs, dtype=dtype)
    self.norm_1x1 = layer_norm(out_dim, 1e-6, rngs, dtype=dtype)
    self.conv_3x3 = conv2d(out_dim, out_dim, 3, use_bias=False, rngs=rngs, dtype=dtype)
    self.norm_3x3 = layer_norm(out_dim, 1e-6, rngs, dtype=dtype)

  def __call__(self, x):
    if self.up is not None:
      x = self.up(x)
    x = max_pool(x, self.pool)
    return self.norm_3x3(self.conv_3x3(self.norm_1x1(self.conv_1x1(x))))


class SimpleFeaturePyramid(nnx.Module):
  """x [B, H, W, in_dim] (one map of stride `in_stride`) -> {"p<stage>": [B, H * s, W * s, out_dim]}
  for each scale s, in the order of `scales` (python dicts keep it)."""

  def __init__(self, in_dim: int, out_dim: int, scales: Sequence[float], in_stride: int, *, rngs: nnx.Rngs,
               dtype=None):
    names = []
    for scale in scales:
      name = f"simfp_{int(math.log2(int(in_stride / scale)))}"
      setattr(self, name, SFPStage(in_dim, out_dim, scale, rngs=rngs, dtype=dtype))
      names.append(name)
    self.names = tuple(names)

  def __call__(self, x) -> dict[str, jnp.ndarray]:
    return {name.replace("simfp_", "p"): getattr(self, name)(x) for name in self.names}


def clip_pyramid(in_dim: int = 256, out_dim: int = 768, *, rngs: nnx.Rngs, dtype=None) -> SimpleFeaturePyramid:
  """CLIP-SFP (official ``backbone_clip``): the 24x24 PWAM map (stride 14) -> p2 48², p3 24², p4 12², 768 wide."""
  return SimpleFeaturePyramid(in_dim, out_dim, (2.0, 1.0, 0.5), 14, rngs=rngs, dtype=dtype)


def sam_pyramid(dim: int = 256, *, rngs: nnx.Rngs, dtype=None) -> SimpleFeaturePyramid:
  """SAM-SFP (official ``backbone_sam``): SAM's 64x64 embedding (stride 16) -> p4 64², p5 32², p6 16², 256 wide."""
  return SimpleFeaturePyramid(dim, dim, (1.0, 0.5, 0.25), 16, rngs=rngs, dtype=dtype)
