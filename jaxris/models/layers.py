"""Layers every model here shares, written once, and the logical sharding axes of parameters.

Every parameter is created with logical axis names, one per dimension (the MaxText vocabulary):
``embed`` (model width), ``mlp`` (MLP hidden width), ``qkv`` (attention projections' output, i.e.
heads x head_dim), ``heads`` (the same dimension as input of the output projection), ``kv``
(per-head features), ``vocab``, ``conv_in`` / ``conv_out`` (convolution channels), ``norm``
(LayerNorm scale and bias), ``None`` (a dimension that is never split: window positions, kernel
taps, slots). A recipe's ``sharding_rules`` map these names to mesh axes (jaxris/sharding.py).
The names are metadata only: they change no initialiser and no number.
"""

from __future__ import annotations

import jax
from flax import nnx
from jax.sharding import PartitionSpec as P


def axes(*names: str | None) -> dict:
  """Metadata of a parameter whose dimensions are `names`: ``nnx.Param(v, **axes("embed", "mlp"))``.
  Not applied eagerly (no mesh is needed to build a model); jaxris.sharding reads it."""
  return {"out_sharding": tuple(names), "eager_sharding": False}


def dense(d_in: str | None, d_out: str | None) -> dict:
  """kernel/bias metadata of an nnx.Linear: ``nnx.Linear(a, b, **dense("embed", "mlp"))``."""
  return {"kernel_metadata": axes(d_in, d_out), "bias_metadata": axes(d_out)}


def conv(c_in: str | None = "conv_in", c_out: str | None = "conv_out", spatial: int = 2) -> dict:
  """kernel [*taps, in, out] / bias [out] metadata of an nnx.Conv."""
  return {"kernel_metadata": axes(*([None] * spatial), c_in, c_out), "bias_metadata": axes(c_out)}


def norm() -> dict:
  """scale/bias metadata of a LayerNorm (or BatchNorm)."""
  return {"scale_metadata": axes("norm"), "bias_metadata": axes("norm")}


def embedding(rows: str | None = "vocab") -> dict:
  return {"embedding_metadata": axes(rows, "embed")}


def layer_norm(dim: int, eps: float, rngs: nnx.Rngs, dtype=None) -> nnx.LayerNorm:
  """torch.nn.LayerNorm: PyTorch computes the variance as mean((x - mean)^2); flax's fast
  E[x^2] - E[x]^2 loses digits, so it is switched off."""
  return nnx.LayerNorm(dim, epsilon=eps, use_fast_variance=False, dtype=dtype, rngs=rngs, **norm())


BATCH_AXES = ("data", "fsdp")  # the mesh axes a batch is split over (jaxris.sharding.BATCH)


def shard_batch(x: jax.Array) -> jax.Array:
  """Block-boundary constraint: activations split over the batch axes of the active mesh.

  Only where a mesh is set (``jax.set_mesh``, as the train step does); without one (CPU, one
  device, the predictors) it returns `x` untouched. A batch the axes do not divide is left alone.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  names = tuple(a for a in BATCH_AXES if a in mesh.axis_names and mesh.shape[a] > 1)
  size = 1
  for a in names:
    size *= mesh.shape[a]
  if not names or x.ndim == 0 or x.shape[0] % size:
    return x
  return jax.lax.with_sharding_constraint(x, P(names))
