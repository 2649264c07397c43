"""Mask2Former-style attention layers as the bridge uses them (Txt2txt and DFAM), batch first.

The official layers wrap ``nn.MultiheadAttention`` and reset every parameter with more than one
dimension with xavier_uniform: the packed [3 * dim, dim] input projection as one matrix, the
output projection, the FFN weights. PyTorch's MultiheadAttention then holds zero biases in its
projections, while the FFN linears keep PyTorch's default biases. The packed projection is kept
packed here (``in_proj``: kernel [dim, 3 * dim] = ``in_proj_weight.T``) so xavier sees the same
fans and a converter is a transpose.

All layers are post-norm (``normalize_before=False`` in the official configs) and dropout is 0.
Masks follow the JAX convention, True = may attend; PyTorch's ``attn_mask`` (True = blocked)
must be inverted by the caller.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxris.models.layers import layer_norm
from jaxris.models.ris.bridge.common import xavier_linear


class MultiheadAttention(nnx.Module):
  """torch.nn.MultiheadAttention(dim, num_heads) with batch-first inputs and no dropout.

  q [B, Nq, dim], k / v [B, Nk, dim], mask broadcastable to [B, heads, Nq, Nk] (True = attend)
  -> [B, Nq, dim]. Scores are (q / sqrt(head_dim)) . k as PyTorch computes them.
  """

  def __init__(self, dim: int, num_heads: int, *, rngs: nnx.Rngs, dtype=None):
    self.num_heads = num_heads
    self.in_proj = xavier_linear(dim, 3 * dim, ("embed", "qkv"), rngs=rngs, dtype=dtype)
    self.out_proj = xavier_linear(dim, dim, ("heads", "embed"), rngs=rngs, dtype=dtype)

  def __call__(self, q, k, v, mask=None):
    dim = q.shape[-1]
    kernel, bias = self.in_proj.kernel[...], self.in_proj.bias[...]
    if self.in_proj.dtype is not None:
      q, k, v = (t.astype(self.in_proj.dtype) for t in (q, k, v))
      kernel, bias = kernel.astype(self.in_proj.dtype), bias.astype(self.in_proj.dtype)
    heads = lambda t: t.reshape(*t.shape[:2], self.num_heads, dim // self.num_heads)
    q = heads(q @ kernel[:, :dim] + bias[:dim])
    k = heads(k @ kernel[:, dim:2 * dim] + bias[dim:2 * dim])
    v = heads(v @ kernel[:, 2 * dim:] + bias[2 * dim:])
    q = q * (dim // self.num_heads) ** -0.5
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32)
    if mask is not None:
      scores = jnp.where(mask, scores, -jnp.inf)
    weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
    return self.out_proj(out.reshape(*out.shape[:2], dim))


def _add(x, pos):
  return x if pos is None else x + pos


class CrossAttentionLayer(nnx.Module):
  """Post-norm cross-attention: LN(x + MHA(x + query_pos, memory + pos, memory))."""

  def __init__(self, dim: int, num_heads: int, *, rngs: nnx.Rngs, dtype=None):
    self.multihead_attn = MultiheadAttention(dim, num_heads, rngs=rngs, dtype=dtype)
    self.norm = layer_norm(dim, 1e-5, rngs, dtype=dtype)

  def __call__(self, x, memory, mask=None, pos=None, query_pos=None):
    return self.norm(x + self.multihead_attn(_add(x, query_pos), _add(memory, pos), memory, mask))


class SelfAttentionLayer(nnx.Module):
  """Post-norm self-attention: LN(x + MHA(x + query_pos, x + query_pos, x))."""

  def __init__(self, dim: int, num_heads: int, *, rngs: nnx.Rngs, dtype=None):
    self.self_attn = MultiheadAttention(dim, num_heads, rngs=rngs, dtype=dtype)
    self.norm = layer_norm(dim, 1e-5, rngs, dtype=dtype)

  def __call__(self, x, mask=None, query_pos=None):
    qk = _add(x, query_pos)
    return self.norm(x + self.self_attn(qk, qk, x, mask))


class FFNLayer(nnx.Module):
  """Post-norm FFN: LN(x + linear2(ReLU(linear1(x))))."""

  def __init__(self, dim: int, ffn_dim: int, *, rngs: nnx.Rngs, dtype=None):
    self.linear1 = xavier_linear(dim, ffn_dim, ("embed", "mlp"), torch_bias=True, rngs=rngs, dtype=dtype)
    self.linear2 = xavier_linear(ffn_dim, dim, ("mlp", "embed"), torch_bias=True, rngs=rngs, dtype=dtype)
    self.norm = layer_norm(dim, 1e-5, rngs, dtype=dtype)

  def __call__(self, x):
    return self.norm(x + self.linear2(jax.nn.relu(self.linear1(x))))
