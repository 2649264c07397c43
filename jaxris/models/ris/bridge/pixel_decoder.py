"""The bridge's pixel decoder: Mask2Former's MSDeformAttnPixelDecoder with one change (spec §4.3).

It turns the three CLIP-SFP maps (p2 48², p3 24², p4 12², 768 wide) into (a) the dense prompt
``p_dense`` [B, 48, 48, 256] that is added to SAM's embedding and (b) the three multi-scale maps
DFAM reads. Steps, all NHWC and fp32 (the official code disables autocast here):

  1. ``input_proj[i]`` (Conv1x1 768 -> 256 + GroupNorm(32)) on the levels coarse -> fine
     [p4, p3, p2]; the sine position encoding plus ``level_embed[i]`` as positions.
  2. Six deformable-attention encoder layers over the concatenated levels (post-norm:
     LN(x + MSDA(x + pos)), then LN(x + FFN(x)); 8 heads, 4 points per level, FFN 1024, ReLU,
     dropout 0). Reference points are the pixel centres of each level (valid ratio 1).
  3. The one change: three FPN levels instead of Mask2Former's computed count (which would be
     0 here). For f in [p4, p3, p2]: ``y = lateral(f) + bilinear(previous -> size(f))`` then
     ``ReLU(GN(Conv3x3(y)))``; the first "previous" is the 48² transformer output, so that step
     *down*-samples 48 -> 12 (torch's non-antialiased bilinear).
  4. ``p_dense = mask_features(last FPN output)`` (Conv1x1 with bias); the multi-scale maps are
     the transformer outputs [12², 24², 48²].

Multi-scale deformable attention is written with ``jaxris.ops.grid_sample`` in the form of the
reference ``ms_deform_attn_core_pytorch`` (bilinear, zero padding, align_corners=False at
``2 * loc - 1``), so it runs on any backend and is differentiable in values and locations.

Initialisations are the official ones for training from scratch: input_proj xavier (bias 0);
encoder weights xavier, then MSDeformAttn's reset (offsets: weight 0, bias = 8 unit directions
scaled by point index + 1; attention weights 0; value/output projections xavier, bias 0);
``level_embed`` N(0, 1); lateral/output/mask_features convs ``c2_xavier_fill``.

Parameter paths mirror the official state dict: ``input_proj.{i}.{conv,norm}`` (official
``input_proj.i.0/1``), ``transformer.level_embed``,
``transformer.encoder.layers.{i}.{self_attn.{sampling_offsets,attention_weights,value_proj,
output_proj},norm1,linear1,linear2,norm2}``, ``adapter_{1,2,3}`` / ``layer_{1,2,3}`` (``{conv,norm}``,
1 = the finest level p2, 3 = p4; official ``adapter_i.weight`` / ``adapter_i.norm.*``),
``mask_features``.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxris.models.layers import axes, dense, layer_norm
from jaxris.models.ris.bridge.common import ConvNorm, conv2d, group_norm, xavier_linear
from jaxris.models.ris.bridge.position import sine_position_encoding
from jaxris.ops.grid_sample import grid_sample
from jaxris.ops.resize import resize_2d


def _offset_bias(num_heads: int, num_levels: int, num_points: int) -> np.ndarray:
  """MSDeformAttn's initial offsets: head h points along angle 2*pi*h/heads, the direction
  scaled so its larger coordinate is 1, times (point index + 1); the same for every level.
  Flattened in the projection's (head, level, point, xy) output order."""
  theta = np.arange(num_heads, dtype=np.float32) * np.float32(2.0 * math.pi / num_heads)
  direction = np.stack([np.cos(theta), np.sin(theta)], -1)
  direction = direction / np.abs(direction).max(-1, keepdims=True)
  grid = np.broadcast_to(direction[:, None, None, :], (num_heads, num_levels, num_points, 2))
  grid = grid * np.arange(1, num_points + 1, dtype=np.float32)[None, None, :, None]
  return grid.reshape(-1).astype(np.float32)


class MSDeformAttn(nnx.Module):
  """Multi-scale deformable attention (Deformable DETR), batch first.

  query [B, Lq, dim], reference [Lq, 2] as (x, y) in [0, 1], value_in [B, sum H_l*W_l, dim]
  (the levels flattened row-major and concatenated), shapes ((H_0, W_0), ...) -> [B, Lq, dim].
  """

  def __init__(self, dim: int = 256, num_levels: int = 3, num_heads: int = 8, num_points: int = 4, *,
               rngs: nnx.Rngs):
    if dim % num_heads:
      raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
    self.dim, self.num_levels, self.num_heads, self.num_points = dim, num_levels, num_heads, num_points
    n_off = num_heads * num_levels * num_points
    bias = jnp.asarray(_offset_bias(num_heads, num_levels, num_points))
    self.sampling_offsets = nnx.Linear(dim, 2 * n_off, kernel_init=nnx.initializers.zeros_init(),
                                       bias_init=lambda *_: bias, rngs=rngs, **dense("embed", None))
    self.attention_weights = nnx.Linear(dim, n_off, kernel_init=nnx.initializers.zeros_init(), rngs=rngs,
                                        **dense("embed", None))
    self.value_proj = xavier_linear(dim, dim, ("embed", "qkv"), rngs=rngs)
    self.output_proj = xavier_linear(dim, dim, ("heads", "embed"), rngs=rngs)

  def __call__(self, query, reference, value_in, shapes: Sequence[tuple[int, int]]):
    b, lq, _ = query.shape
    m, nl, p = self.num_heads, self.num_levels, self.num_points
    d = self.dim // m
    value = self.value_proj(value_in).reshape(b, -1, m, d)
    offsets = self.sampling_offsets(query).reshape(b, lq, m, nl, p, 2)
    weights = jax.nn.softmax(self.attention_weights(query).reshape(b, lq, m, nl * p), axis=-1)
    weights = weights.reshape(b, lq, m, nl, p)
    normalizer = jnp.asarray([[w, h] for h, w in shapes], offsets.dtype)  # (W, H) per level
    loc = reference[None, :, None, None, None, :] + offsets / normalizer[None, None, None, :, None, :]
    grids = 2.0 * loc - 1.0
    out = jnp.zeros((b, lq, m, d), value.dtype)
    start = 0
    for level, (h, w) in enumerate(shapes):
      v = value[:, start:start + h * w].reshape(b, h, w, m, d)
      start += h * w
      v = v.transpose(0, 3, 1, 2, 4).reshape(b * m, h, w, d)           # one image per (sample, head)
      g = grids[:, :, :, level].transpose(0, 2, 1, 3, 4).reshape(b * m, lq, p, 2)
      sampled = grid_sample(v, g).reshape(b, m, lq, p, d)              # [B, M, Lq, P, D]
      out = out + jnp.einsum("bmqpd,bqmp->bqmd", sampled, weights[:, :, :, level])
    return self.output_proj(out.reshape(b, lq, self.dim))


class EncoderLayer(nnx.Module):
  """Post-norm deformable encoder layer: LN(x + MSDA(x + pos)), then LN(x + FFN(x)); dropout 0."""

  def __init__(self, dim: int, ffn_dim: int, num_levels: int, num_heads: int, num_points: int, *, rngs: nnx.Rngs):
    self.self_attn = MSDeformAttn(dim, num_levels, num_heads, num_points, rngs=rngs)
    self.norm1 = layer_norm(dim, 1e-5, rngs)
    self.linear1 = xavier_linear(dim, ffn_dim, ("embed", "mlp"), torch_bias=True, rngs=rngs)
    self.linear2 = xavier_linear(ffn_dim, dim, ("mlp", "embed"), torch_bias=True, rngs=rngs)
    self.norm2 = layer_norm(dim, 1e-5, rngs)

  def __call__(self, x, pos, reference, shapes):
    x = self.norm1(x + self.self_attn(x + pos, reference, x, shapes))
    return self.norm2(x + self.linear2(jax.nn.relu(self.linear1(x))))


class Encoder(nnx.Module):
  def __init__(self, num_layers: int, dim: int, ffn_dim: int, num_levels: int, num_heads: int, num_points: int, *,
               rngs: nnx.Rngs):
    self.layers = nnx.List([EncoderLayer(dim, ffn_dim, num_levels, num_heads, num_points, rngs=rngs)
                            for _ in range(num_layers)])

  def __call__(self, x, pos, reference, shapes):
    for layer in self.layers:
      x = layer(x, pos, reference, shapes)
    return x


class EncoderOnly(nnx.Module):
  """``MSDeformAttnTransformerEncoderOnly``: the level embedding and the encoder."""

  def __init__(self, dim: int, num_layers: int, ffn_dim: int, num_levels: int, num_heads: int, num_points: int, *,
               rngs: nnx.Rngs):
    self.level_embed = nnx.Param(jax.random.normal(rngs.params(), (num_levels, dim)), **axes(None, "embed"))
    self.encoder = Encoder(num_layers, dim, ffn_dim, num_levels, num_heads, num_points, rngs=rngs)

  def __call__(self, srcs: Sequence[jnp.ndarray]) -> list[jnp.ndarray]:
    """srcs: [B, H_l, W_l, dim] coarse -> fine; returns the encoded maps, same shapes."""
    b, dim = srcs[0].shape[0], srcs[0].shape[-1]
    shapes = [tuple(s.shape[1:3]) for s in srcs]
    level_embed = self.level_embed[...]
    pos = jnp.concatenate([jnp.asarray(sine_position_encoding(h, w, dim // 2)).reshape(h * w, dim) + level_embed[i]
                           for i, (h, w) in enumerate(shapes)])
    # Pixel centres, normalised per level; (x, y) order.
    reference = jnp.asarray(np.concatenate([
        np.stack(np.meshgrid((np.arange(w) + 0.5) / w, (np.arange(h) + 0.5) / h), -1).reshape(-1, 2)
        for h, w in shapes]).astype(np.float32))
    x = jnp.concatenate([s.reshape(b, -1, dim) for s in srcs], axis=1)
    y = self.encoder(x, pos[None].astype(x.dtype), reference, shapes)
    out, start = [], 0
    for h, w in shapes:
      out.append(y[:, start:start + h * w].reshape(b, h, w, dim))
      start += h * w
    return out


class PixelDecoder(nnx.Module):
  """features [p2, p3, p4] fine -> coarse, each [B, H_l, W_l, in_channels[l]] ->
  (p_dense [B, H_0, W_0, mask_dim], multi_scale [coarse ..., fine] each [B, H, W, conv_dim]).

  With the bridge's sizes: [48², 24², 12²] x 768 -> p_dense 48² x 256 and [12², 24², 48²] x 256.
  """

  def __init__(self, in_channels: Sequence[int] = (768, 768, 768), conv_dim: int = 256, mask_dim: int = 256,
               num_layers: int = 6, num_heads: int = 8, num_points: int = 4, ffn_dim: int = 1024,
               num_fpn_levels: int = 3, *, rngs: nnx.Rngs):
    n = len(in_channels)
    self.num_fpn_levels = num_fpn_levels
    # input_proj runs coarse -> fine: index 0 is the last (coarsest) input.
    self.input_proj = nnx.List([ConvNorm(conv2d(c, conv_dim, 1, init="xavier", rngs=rngs), group_norm(conv_dim, rngs=rngs))
                                for c in in_channels[::-1]])
    self.transformer = EncoderOnly(conv_dim, num_layers, ffn_dim, n, num_heads, num_points, rngs=rngs)
    self.mask_features = conv2d(conv_dim, mask_dim, 1, init="c2_xavier", rngs=rngs)
    for i, c in enumerate(in_channels[:num_fpn_levels]):
      setattr(self, f"adapter_{i + 1}", ConvNorm(conv2d(c, conv_dim, 1, init="c2_xavier", use_bias=False, rngs=rngs),
                                                 group_norm(conv_dim, rngs=rngs)))
      setattr(self, f"layer_{i + 1}", ConvNorm(conv2d(conv_dim, conv_dim, 3, init="c2_xavier", use_bias=False, rngs=rngs),
                                               group_norm(conv_dim, rngs=rngs), relu=True))

  def __call__(self, features: Sequence[jnp.ndarray]):
    features = [f.astype(jnp.float32) for f in features]
    srcs = [proj(f) for proj, f in zip(self.input_proj, features[::-1])]
    out = self.transformer(srcs)
    multi_scale = list(out)
    for i in reversed(range(self.num_fpn_levels)):  # coarse -> fine: adapter_3 (p4) first
      f = features[i]
      lateral = getattr(self, f"adapter_{i + 1}")(f)
      y = lateral + resize_2d(out[-1], lateral.shape[1:3], "bilinear", axes=(1, 2))
      out.append(getattr(self, f"layer_{i + 1}")(y))
    return self.mask_features(out[-1]), multi_scale[:3]
