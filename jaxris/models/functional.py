"""An NNX model as a pure function of a flat ``{dotted name: array}`` parameter dict.

Flat dicts are the one pytree that optax, Orbax and the sharding rules all handle without
adapters (Orbax wants string keys; the rules match dotted names).
"""

from __future__ import annotations

from flax import nnx

from jaxris.weights.store import path_name


def split_params(model: nnx.Module):
  """-> (graphdef, params {name: array}, rest): trainable parameters apart from buffers/RNG state."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  return graphdef, {path_name(k): v.get_value() for k, v in nnx.to_flat_state(params)}, rest


def buffers(rest) -> dict:
  """The fixed tensors (not RNG state) among `rest`, by dotted name: what an export adds to the params."""
  return {path_name(k): v.get_value() for k, v in nnx.to_flat_state(rest)
          if not isinstance(v, nnx.RngState)}


def merge(graphdef, params: dict, rest) -> nnx.Module:
  """Rebuilds the model from `split_params` parts (inside jit, with traced parameters)."""
  path = lambda name: tuple(int(p) if p.isdigit() else p for p in name.split("."))
  state = nnx.from_flat_state({path(k): nnx.Param(v) for k, v in params.items()})
  return nnx.merge(graphdef, state, rest)
