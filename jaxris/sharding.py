"""Device mesh and sharding rules: axes ('data', 'fsdp', 'tensor'), as in MaxText's vocabulary.

* data:   batch split, parameters replicated;
* fsdp:   batch split *and* every parameter split along its largest divisible dimension
          (ZeRO-3 style: XLA all-gathers weights before use and reduce-scatters gradients);
* tensor: Megatron-style split of attention/MLP matmuls: the first Linear of a pair splits its
          output features, the second its input features, so the pair needs one reduction.

One device is a mesh of shape (1, 1, 1). Rules are (regex on the dotted parameter path, one mesh
axis or None per dimension); a dimension that the axis size does not divide stays whole.
"""

from __future__ import annotations

import re
from typing import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp", "tensor")
BATCH = ("data", "fsdp")  # the batch is split over both data-parallel axes

# First Linear of a pair: [in, out] -> out over 'tensor'. Second: in over 'tensor'.
# DIT's cross-attention slots: MHAtt's linear_{q,k,v} -> linear_merge (512 = 8 heads split over
# 'tensor'), MHA_FFN's ffn.mlp.fc.linear -> ffn.mlp.linear. Its learnt `tokens` [D, 20, C] take the
# default (fsdp over C).
_COLUMN = (r"attn\.qkv|mlp\.lin1|attention\.self\.(?:query|key|value)|intermediate\.dense|(?:q|k|v)_proj|ffn\.fc1"
           r"|linear_[qkv]|ffn\.mlp\.fc\.linear")
_ROW = (r"attn\.proj|mlp\.lin2|attention\.output\.dense|(?<!attention\.)output\.dense|out_proj|ffn\.fc2"
        r"|linear_merge|ffn\.mlp\.linear")
# BEiT-3's multiway layers hold one copy per expert (vision .A, text .B): same rules for each.
_EXPERT = r"(?:\.[AB])?"
TENSOR_RULES: Sequence[tuple[str, tuple]] = (
    (rf".*(?:{_COLUMN}){_EXPERT}\.kernel", ("fsdp", "tensor")),
    (rf".*(?:{_COLUMN}){_EXPERT}\.bias", ("tensor",)),
    (rf".*(?:{_ROW}){_EXPERT}\.kernel", ("tensor", "fsdp")),
)


def make_mesh(shape: Sequence[int] = (-1, 1, 1), devices=None) -> Mesh:
  """A mesh over the given (default: all) devices; one -1 in `shape` takes the remaining devices."""
  devices = np.asarray(jax.devices() if devices is None else devices)
  shape = list(shape)
  if shape.count(-1) > 1:
    raise ValueError(f"mesh shape {shape}: at most one -1")
  if -1 in shape:
    rest = int(np.prod([s for s in shape if s != -1]))
    if devices.size % rest:
      raise ValueError(f"mesh shape {shape} does not divide {devices.size} devices")
    shape[shape.index(-1)] = devices.size // rest
  need = int(np.prod(shape))
  if need > devices.size:
    raise ValueError(f"mesh shape {tuple(shape)} needs {need} devices, {devices.size} are available")
  return Mesh(devices.flat[:need].reshape(shape), AXES)  # a smaller mesh uses the first devices


def _fit(spec: tuple, shape: tuple[int, ...], mesh: Mesh) -> P:
  """Drops axes that are absent, of size 1, or that do not divide their dimension."""
  spec = tuple(spec) + (None,) * (len(shape) - len(spec))
  out = []
  for dim, axis in zip(shape, spec):
    size = mesh.shape.get(axis, 1) if axis else 1
    out.append(axis if axis and size > 1 and dim % size == 0 else None)
  return P(*out)


def param_spec(name: str, shape: tuple[int, ...], mesh: Mesh) -> P:
  for pattern, spec in TENSOR_RULES:
    if re.fullmatch(pattern, name):
      return _fit(spec, shape, mesh)
  # Default: FSDP over the largest dimension the fsdp axis divides.
  fsdp = mesh.shape.get("fsdp", 1)
  if fsdp > 1 and shape:
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
      if shape[dim] % fsdp == 0:
        spec = [None] * len(shape)
        spec[dim] = "fsdp"
        return P(*spec)
  return P()


def tree_shardings(tree, mesh: Mesh, names=None):
  """NamedShardings for a pytree of arrays whose leaves are named by their dotted path."""
  def one(path, leaf):
    name = ".".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)
    return NamedSharding(mesh, param_spec(name, tuple(np.shape(leaf)), mesh))
  return jax.tree_util.tree_map_with_path(one, tree)


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This process's part of the batch -> global arrays split over (data, fsdp)."""
  return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, np.ndim(v)), np.asarray(v))
          for k, v in batch.items()}
