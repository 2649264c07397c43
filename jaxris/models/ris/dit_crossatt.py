"""The text-slot modules of DIT-SAM's cross-attention variants (wysnzzzz/DIT,
image_encoder_cross_attention{,_FFN}.py and layers/sa_layer.py), in Flax NNX.

Names mirror the official state_dict (``linear_q``, ``mhatt.linear_merge``, ``ffn.mlp.fc.linear``,
``norm1`` ...) so the converter stays a table. The official modules hard-code their sizes
(``MHAtt(768, 512, 8, 0.1)``, FFN 768 -> 2048 -> 768); the inner sizes are kept whatever the ViT
width (a reduced ViT gets the same 8 heads of 64 and the 2048-wide FFN), only the outer width
follows the ViT. Every dropout here takes the encoder's slot-dropout rate (0.1, as the official
constants).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxris.models.layers import axes, dense
from jaxris.ops.attention import attention

ATT_DIM = 512    # MHAtt hidden size (official constant)
ATT_HEADS = 8
FFN_DIM = 2048   # MHA_FFN's FFN hidden size (official constant)


def torch_linear(din: int, dout: int, names: tuple[str, str], *, rngs: nnx.Rngs, dtype=None) -> nnx.Linear:
  """nn.Linear with PyTorch's default initialisation: weight and bias U(+-1/sqrt(din))."""
  bound = din ** -0.5
  return nnx.Linear(din, dout, kernel_init=nnx.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
                    bias_init=lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound),
                    dtype=dtype, rngs=rngs, **dense(*names))


def xavier_linear(din: int, dout: int, names: tuple[str, str], *, rngs: nnx.Rngs, dtype=None) -> nnx.Linear:
  """nn.Linear after the official ``xavier_uniform_(weight)`` and ``constant_(bias, 0)``."""
  return nnx.Linear(din, dout, kernel_init=nnx.initializers.xavier_uniform(),
                    bias_init=nnx.initializers.zeros_init(), dtype=dtype, rngs=rngs, **dense(*names))


class LayerNorm(nnx.Module):
  """sa_layer.LayerNorm, not torch's: weight * (x - mean) / (unbiased std + eps) + bias."""

  def __init__(self, dim: int, eps: float = 1e-6):
    self.eps = eps
    self.weight = nnx.Param(jnp.ones((dim,)), **axes("norm"))
    self.bias = nnx.Param(jnp.zeros((dim,)), **axes("norm"))

  def __call__(self, x):
    dtype = x.dtype
    x = x.astype(jnp.float32)
    mean = x.mean(-1, keepdims=True)
    std = jnp.std(x, axis=-1, keepdims=True, ddof=1)  # torch.Tensor.std is unbiased by default
    return (self.weight[...] * (x - mean) / (std + self.eps) + self.bias[...]).astype(dtype)


class MHAtt(nnx.Module):
  """Multi-head attention v, k, q -> [B, Nq, dim]: scores / sqrt(head dim), dropout on the weights, no mask."""

  def __init__(self, dim: int, dropout: float, *, rngs: nnx.Rngs, dtype=None):
    self.linear_v = xavier_linear(dim, ATT_DIM, ("embed", "qkv"), rngs=rngs, dtype=dtype)
    self.linear_k = xavier_linear(dim, ATT_DIM, ("embed", "qkv"), rngs=rngs, dtype=dtype)
    self.linear_q = xavier_linear(dim, ATT_DIM, ("embed", "qkv"), rngs=rngs, dtype=dtype)
    self.linear_merge = xavier_linear(ATT_DIM, dim, ("heads", "embed"), rngs=rngs, dtype=dtype)
    self.dropout = nnx.Dropout(dropout)

  def __call__(self, v, k, q, *, deterministic: bool, rngs=None):
    heads = lambda t: t.reshape(*t.shape[:2], ATT_HEADS, ATT_DIM // ATT_HEADS)
    v, k, q = heads(self.linear_v(v)), heads(self.linear_k(k)), heads(self.linear_q(q))
    active = not deterministic and self.dropout.rate > 0
    dropout = (lambda w: self.dropout(w, deterministic=False, rngs=rngs)) if active else None
    out = attention(q, k, v, scale=(ATT_DIM // ATT_HEADS) ** -0.5, dropout=dropout)
    return self.linear_merge(out.reshape(*out.shape[:2], ATT_DIM))


class _FC(nnx.Module):
  """sa_layer.FC: Linear -> ReLU -> Dropout."""

  def __init__(self, din: int, dout: int, dropout: float, *, rngs: nnx.Rngs, dtype=None):
    self.linear = torch_linear(din, dout, ("embed", "mlp"), rngs=rngs, dtype=dtype)
    self.dropout = nnx.Dropout(dropout)

  def __call__(self, x, *, deterministic: bool, rngs=None):
    return self.dropout(jax.nn.relu(self.linear(x)), deterministic=deterministic, rngs=rngs)


class _MLP(nnx.Module):
  """sa_layer.MLP: FC (with ReLU and dropout) then a plain Linear."""

  def __init__(self, dim: int, hidden: int, dropout: float, *, rngs: nnx.Rngs, dtype=None):
    self.fc = _FC(dim, hidden, dropout, rngs=rngs, dtype=dtype)
    self.linear = torch_linear(hidden, dim, ("mlp", "embed"), rngs=rngs, dtype=dtype)

  def __call__(self, x, **kw):
    return self.linear(self.fc(x, **kw))


class _FFN(nnx.Module):
  def __init__(self, dim: int, dropout: float, *, rngs: nnx.Rngs, dtype=None):
    self.mlp = _MLP(dim, FFN_DIM, dropout, rngs=rngs, dtype=dtype)

  def __call__(self, x, **kw):
    return self.mlp(x, **kw)


class MHAFFN(nnx.Module):
  """Official MHA_FFN: post-norm cross-attention of the queries q over v/k, then a post-norm FFN."""

  def __init__(self, dim: int, dropout: float, *, rngs: nnx.Rngs, dtype=None):
    self.mhatt = MHAtt(dim, dropout, rngs=rngs, dtype=dtype)
    self.ffn = _FFN(dim, dropout, rngs=rngs, dtype=dtype)
    self.dropout1 = nnx.Dropout(dropout)
    self.norm1 = LayerNorm(dim)
    self.dropout2 = nnx.Dropout(dropout)
    self.norm2 = LayerNorm(dim)

  def __call__(self, v, k, q, *, deterministic: bool, rngs=None):
    kw = dict(deterministic=deterministic, rngs=rngs)
    q = self.norm1(q + self.dropout1(self.mhatt(v, k, q, **kw), **kw))
    return self.norm2(q + self.dropout2(self.ffn(q, **kw), **kw))
