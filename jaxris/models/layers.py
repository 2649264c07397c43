"""Layers every model here shares, written once."""

from __future__ import annotations

from flax import nnx


def layer_norm(dim: int, eps: float, rngs: nnx.Rngs, dtype=None) -> nnx.LayerNorm:
  """torch.nn.LayerNorm: PyTorch computes the variance as mean((x - mean)^2); flax's fast
  E[x^2] - E[x]^2 loses digits, so it is switched off."""
  return nnx.LayerNorm(dim, epsilon=eps, use_fast_variance=False, dtype=dtype, rngs=rngs)
