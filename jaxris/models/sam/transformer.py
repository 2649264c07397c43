"""SAM's two-way transformer (segment_anything/modeling/transformer.py) in Flax NNX.

Prompt tokens attend to image tokens and image tokens attend back, in ``depth`` blocks; the
first block skips adding the query positional encoding to its self-attention input.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxris.models.layers import dense
from jaxris.models.sam.common import MLPBlock, layer_norm
from jaxris.ops.attention import attention


class Attention(nnx.Module):
  """Attention with separate q/k/v projections that may downscale the internal width."""

  def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1, *, rngs: nnx.Rngs, dtype=None):
    internal_dim = embedding_dim // downsample_rate
    assert internal_dim % num_heads == 0, "num_heads must divide embedding_dim / downsample_rate"
    self.num_heads = num_heads
    self.q_proj = nnx.Linear(embedding_dim, internal_dim, dtype=dtype, rngs=rngs, **dense("embed", "qkv"))
    self.k_proj = nnx.Linear(embedding_dim, internal_dim, dtype=dtype, rngs=rngs, **dense("embed", "qkv"))
    self.v_proj = nnx.Linear(embedding_dim, internal_dim, dtype=dtype, rngs=rngs, **dense("embed", "qkv"))
    self.out_proj = nnx.Linear(internal_dim, embedding_dim, dtype=dtype, rngs=rngs, **dense("heads", "embed"))

  def __call__(self, q, k, v):
    split = lambda x: x.reshape(x.shape[0], x.shape[1], self.num_heads, -1)
    q, k, v = split(self.q_proj(q)), split(self.k_proj(k)), split(self.v_proj(v))
    out = attention(q, k, v, scale=q.shape[-1] ** -0.5)
    return self.out_proj(out.reshape(out.shape[0], out.shape[1], -1))


class TwoWayAttentionBlock(nnx.Module):
  def __init__(self, embedding_dim: int, num_heads: int, mlp_dim: int, attention_downsample_rate: int,
               skip_first_layer_pe: bool, *, rngs: nnx.Rngs, dtype=None):
    relu = jax.nn.relu
    self.self_attn = Attention(embedding_dim, num_heads, rngs=rngs, dtype=dtype)
    self.norm1 = layer_norm(embedding_dim, 1e-5, rngs, dtype)
    self.cross_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate, rngs=rngs, dtype=dtype)
    self.norm2 = layer_norm(embedding_dim, 1e-5, rngs, dtype)
    self.mlp = MLPBlock(embedding_dim, mlp_dim, act=relu, rngs=rngs, dtype=dtype)
    self.norm3 = layer_norm(embedding_dim, 1e-5, rngs, dtype)
    self.norm4 = layer_norm(embedding_dim, 1e-5, rngs, dtype)
    self.cross_attn_image_to_token = Attention(embedding_dim, num_heads, attention_downsample_rate, rngs=rngs, dtype=dtype)
    self.skip_first_layer_pe = skip_first_layer_pe

  def __call__(self, queries, keys, query_pe, key_pe):
    if self.skip_first_layer_pe:
      queries = self.self_attn(queries, queries, queries)
    else:
      q = queries + query_pe
      queries = queries + self.self_attn(q, q, queries)
    queries = self.norm1(queries)

    q, k = queries + query_pe, keys + key_pe
    queries = self.norm2(queries + self.cross_attn_token_to_image(q, k, keys))
    queries = self.norm3(queries + self.mlp(queries))

    q, k = queries + query_pe, keys + key_pe
    keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries))
    return queries, keys


class TwoWayTransformer(nnx.Module):
  def __init__(self, depth: int, embedding_dim: int, num_heads: int, mlp_dim: int,
               attention_downsample_rate: int = 2, *, rngs: nnx.Rngs, dtype=None):
    self.layers = nnx.List([
        TwoWayAttentionBlock(embedding_dim, num_heads, mlp_dim, attention_downsample_rate, i == 0,
                             rngs=rngs, dtype=dtype)
        for i in range(depth)])
    self.final_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate, rngs=rngs, dtype=dtype)
    self.norm_final_attn = layer_norm(embedding_dim, 1e-5, rngs, dtype)

  def __call__(self, image_embedding, image_pe, point_embedding):
    """image_embedding, image_pe: [B, h, w, C]; point_embedding: [B, N, C].

    Returns (queries [B, N, C], keys [B, h*w, C]).
    """
    b, h, w, c = image_embedding.shape
    keys = image_embedding.reshape(b, h * w, c)
    key_pe = image_pe.reshape(image_pe.shape[0], h * w, c)
    queries = point_embedding
    for layer in self.layers:
      queries, keys = layer(queries, keys, point_embedding, key_pe)
    q, k = queries + point_embedding, keys + key_pe
    queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q, k, keys))
    return queries, keys
