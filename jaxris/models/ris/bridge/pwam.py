"""PWAM: the bridge's pixel-word fusion of frozen CLIP patches with BERT tokens (spec §4.1).

The official ``MMLayer`` / ``myPWAM`` adapts LAVT's pixel-word attention module to CLIP:
the 1024-wide CLIP-L patches are projected to 256 on their way in (LAVT keeps the width), and
the fused map *replaces* the CLIP features (no residual, no tanh gate). Every projection is a
1x1 Conv1d, i.e. a per-token linear (here an ``nnx.Linear``: kernel = ``weight[:, :, 0].T``).

  vis = GELU(vis_project(x))                                 x: [B, N, 1024] -> [B, N, 256]
  q   = InstanceNorm(f_query(x)); k, v = f_key(l) * m, f_value(l) * m
  att = softmax(q k^T / sqrt(256) + 1e4 * m - 1e4) v          over the T words
  out = InstanceNorm(W(att))
  mm  = GELU(project_mm(vis * out))                          -> [B, N, 256]

InstanceNorm normalises each channel over the N positions (biased variance, eps 1e-5, no
affine). GELU is the exact erf form. Initialisation is PyTorch's default (the code calls none).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxris.models.ris.bridge.common import instance_norm, torch_linear
from jaxris.ops.activations import gelu as _gelu


class SpatialImageLanguageAttention(nnx.Module):
  """LAVT's image-to-language attention: each pixel attends over the (masked) words.

  x [B, N, v_in], l [B, T, l_in], mask [B, T] (1 = word, 0 = padding) -> [B, N, value_dim].
  Scores are scaled by key_dim ** -0.5 whatever the head count (as LAVT does).
  """

  def __init__(self, v_in: int, l_in: int, key_dim: int, value_dim: int, num_heads: int = 1, *,
               rngs: nnx.Rngs, dtype=None):
    self.key_dim, self.value_dim, self.num_heads = key_dim, value_dim, num_heads
    self.f_query = torch_linear(v_in, key_dim, ("embed", "qkv"), rngs=rngs, dtype=dtype)
    self.f_key = torch_linear(l_in, key_dim, ("embed", "qkv"), rngs=rngs, dtype=dtype)
    self.f_value = torch_linear(l_in, value_dim, ("embed", "qkv"), rngs=rngs, dtype=dtype)
    self.W = torch_linear(value_dim, value_dim, ("heads", "embed"), rngs=rngs, dtype=dtype)

  def __call__(self, x, l, mask):
    mask = mask.astype(jnp.float32)[:, :, None]                     # [B, T, 1]
    q = instance_norm(self.f_query(x).astype(jnp.float32))         # [B, N, key]
    k = self.f_key(l) * mask
    v = self.f_value(l) * mask
    heads = lambda t, d: t.reshape(*t.shape[:2], self.num_heads, d // self.num_heads)
    q, k, v = heads(q, self.key_dim), heads(k, self.key_dim), heads(v, self.value_dim)
    scores = jnp.einsum("bnhd,bthd->bhnt", q, k).astype(jnp.float32) * self.key_dim ** -0.5
    scores = scores + (1e4 * mask[:, None, None, :, 0] - 1e4)
    weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bhnt,bthd->bnhd", weights, v).reshape(*x.shape[:2], self.value_dim)
    return instance_norm(self.W(out).astype(jnp.float32)).astype(v.dtype)


class PWAM(nnx.Module):
  """Official ``myPWAM``: x [B, N, v_in], l [B, T, l_in], mask [B, T] -> [B, N, dim].

  Parameter paths: ``vis_project``, ``image_lang_att.{f_query,f_key,f_value,W}``, ``project_mm``
  (the official ``vis_project.0``, ``image_lang_att.f_query.0`` ... ``project_mm.0``).
  """

  def __init__(self, v_in: int = 1024, l_in: int = 256, dim: int = 256, num_heads: int = 1, *,
               rngs: nnx.Rngs, dtype=None):
    self.vis_project = torch_linear(v_in, dim, ("embed", "mlp"), rngs=rngs, dtype=dtype)
    self.image_lang_att = SpatialImageLanguageAttention(v_in, l_in, dim, dim, num_heads, rngs=rngs, dtype=dtype)
    self.project_mm = torch_linear(dim, dim, ("mlp", "embed"), rngs=rngs, dtype=dtype)

  def __call__(self, x, l, mask):
    vis = _gelu(self.vis_project(x))
    lang = self.image_lang_att(x, l, mask)
    return _gelu(self.project_mm(vis * lang))


class MMLayer(nnx.Module):
  """Official ``adaptor_clip`` (``MMLayer``): PWAM, then the token sequence as a square map.

  x [B, H*W, v_in] (CLIP patches, CLS dropped), l [B, T, l_in] (``lang_mlp`` of BERT), mask [B, T]
  -> [B, H, W, dim] (NHWC; the official code reshapes to NCHW).
  """

  def __init__(self, v_in: int = 1024, l_in: int = 256, dim: int = 256, *, rngs: nnx.Rngs, dtype=None):
    self.fusion = PWAM(v_in, l_in, dim, rngs=rngs, dtype=dtype)

  def __call__(self, x, l, mask):
    side = int(round(x.shape[1] ** 0.5))
    if side * side != x.shape[1]:
      raise ValueError(f"MMLayer expects a square grid of patches, got {x.shape[1]} tokens")
    y = self.fusion(x, l, mask)
    return y.reshape(y.shape[0], side, side, y.shape[-1])
