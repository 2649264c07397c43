"""What a recipe's ``data`` config reads: RefShapes (built in) or the official RefCOCO files."""

from __future__ import annotations

import os
from collections.abc import Sequence

from jaxris.data import transforms

_DIT_SIDE = 512


def check_paths(cfg) -> None:
  """Fails within seconds when the dataset's files are missing, naming them."""
  if cfg.data.name == "refshapes":
    return
  from jaxris.data import refcoco
  for path in refcoco.annotation_files(cfg.data.root, cfg.data.dataset):
    if not os.path.isfile(path):
      raise FileNotFoundError(
          f"{path} not found: the {cfg.data.dataset} annotations are missing under data.root={cfg.data.root}. "
          f"Get refs(*).p and instances.json from the official refer release (lichengunc/refer) and COCO "
          f"train2014 images, then check the layout with python -m jaxris.data.refcoco --root {cfg.data.root} "
          f"--check; or train on the built-in data with the ':refshapes' config argument")


def _refshapes_config(cfg):
  from jaxris.data.refshapes import RefShapesConfig
  return RefShapesConfig(**dict(cfg.data.refshapes))


def _read(cfg, split: str) -> list[dict]:
  if cfg.data.name == "refshapes":
    from jaxris.data import refshapes
    return list(refshapes.examples(_refshapes_config(cfg), split))
  from jaxris.data import refcoco
  return refcoco.read_split(cfg.data.root, cfg.data.dataset, split)


def train_examples(cfg) -> Sequence[dict]:
  if cfg.data.name == "refshapes":  # rendered as the loader draws them, not all before the first step
    from jaxris.data.refshapes import LazyExamples
    return LazyExamples(_refshapes_config(cfg), cfg.data.train_split)
  return _read(cfg, cfg.data.train_split)


def eval_examples(cfg, split: str) -> list[dict]:
  return _read(cfg, split)


def expression_type_of(cfg):
  """sentence -> its expression type, for data that has them (RefShapes: attribute, superlative,
  position, relation), else None. Evaluation reports mIoU per type with it."""
  if cfg.data.name == "refshapes":
    from jaxris.data.refshapes import expression_type
    return expression_type
  return None


def preprocess_for(cfg) -> transforms.PreprocessConfig:
  """The recipe's preprocessing at its input size; DIT's training scales shrink with it."""
  size = cfg.data.image_size
  overrides = {"size": size}
  if cfg.data.preprocess == "dit":
    dit = transforms.preprocess_config("dit")
    overrides["train_sizes"] = tuple(sorted({max(1, round(s * size / _DIT_SIDE)) for s in dit.train_sizes},
                                            reverse=True))
  else:  # SAM / EVF-SAM: no scale augmentation, the longest side is the input size
    overrides["train_sizes"] = (size,)
  if cfg.data.evf_size:
    overrides["evf_size"] = cfg.data.evf_size  # BEiT-3's square view (224 official)
  if cfg.data.name == "refshapes":
    # Colour words carry the meaning here; the flip (with left/right swapped) stays.
    overrides["jitter_prob"] = 0.0
  return transforms.preprocess_config(cfg.data.preprocess, **overrides)
