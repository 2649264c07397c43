"""Converted weights on disk: ``DIR/config.json`` + ``DIR/params.safetensors``.

The format needs neither PyTorch nor pickles. ``config.json`` records the model family and
the constructor arguments; parameter names are the dotted Flax NNX paths of the model.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors.numpy import load_file, save_file

CONFIG_FILE = "config.json"
PARAMS_FILE = "params.safetensors"


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


def save(directory: str, family: str, config: dict, params: dict[str, np.ndarray]) -> None:
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, CONFIG_FILE), "w") as f:
    json.dump({"family": family, "config": config}, f, indent=2, sort_keys=True)
  save_file({k: np.ascontiguousarray(np.asarray(v)) for k, v in params.items()},
            os.path.join(directory, PARAMS_FILE))


def load(directory: str, family: str | None = None) -> tuple[dict, dict[str, np.ndarray]]:
  """Returns (config, params). Fails with the missing path named."""
  cfg_path = os.path.join(directory, CONFIG_FILE)
  params_path = os.path.join(directory, PARAMS_FILE)
  for p in (cfg_path, params_path):
    if not os.path.isfile(p):
      raise FileNotFoundError(
          f"{p} not found: {directory} is not a converted jaxris weights directory "
          "(make one with the converters in convert/, e.g. python convert/sam.py --src X.pth --out DIR)")
  with open(cfg_path) as f:
    meta = json.load(f)
  if family is not None and meta.get("family") != family:
    raise ValueError(f"{directory} holds '{meta.get('family')}' weights, expected '{family}'")
  return meta["config"], load_file(params_path)
