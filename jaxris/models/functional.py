"""An NNX model as a pure function of a flat ``{dotted name: array}`` parameter dict.

Flat dicts are the one pytree that optax, Orbax and the sharding rules all handle without
adapters (Orbax wants string keys; the rules match dotted names).
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

# Everything a checkpoint holds: trainable parameters and fixed buffers, but not RNG state.
WEIGHTS = nnx.Not(nnx.RngState)


def path_name(path: tuple) -> str:
  return ".".join(str(p) for p in path)


def flat_params(model: nnx.Module) -> dict[str, Any]:
  """Dotted name -> array for every weight (parameters and buffers) of `model`."""
  return {path_name(k): v.get_value() for k, v in nnx.to_flat_state(nnx.state(model, WEIGHTS))}


def param_shapes(model: nnx.Module) -> dict[str, tuple[int, ...]]:
  return {k: tuple(v.shape) for k, v in flat_params(model).items()}


def assign_params(model: nnx.Module, params: dict[str, np.ndarray]) -> None:
  """Writes `params` (dotted names, complete and exactly shaped) into `model` in place."""
  flat = nnx.to_flat_state(nnx.state(model, WEIGHTS))
  names = {path_name(k) for k, _ in flat}
  missing, extra = sorted(names - params.keys()), sorted(params.keys() - names)
  if missing or extra:
    raise ValueError(f"parameter names do not match the model: missing {missing}, unexpected {extra}")
  for path, var in flat:
    value = params[path_name(path)]
    if tuple(value.shape) != tuple(var.get_value().shape):
      raise ValueError(f"{path_name(path)}: shape {tuple(value.shape)} != {tuple(var.get_value().shape)}")
    var.set_value(jnp.asarray(value, dtype=var.get_value().dtype))
  nnx.update(model, nnx.from_flat_state(flat))


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
