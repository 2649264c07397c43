"""Converted weights on disk: ``DIR/config.json`` + ``DIR/params.safetensors``.

The format needs neither PyTorch nor pickles. ``config.json`` records the model family and
the constructor arguments; parameter names are the dotted Flax NNX paths of the model.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

# The model-state helpers live with the models; converters reach them through this module too.
from jaxris.models.functional import WEIGHTS, assign_params, flat_params, param_shapes, path_name  # noqa: F401

CONFIG_FILE = "config.json"
PARAMS_FILE = "params.safetensors"


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
