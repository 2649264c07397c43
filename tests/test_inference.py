"""Predictors: the trained recipe travels with the export, and a dropped predictor frees its weights."""

import gc
import json
import os
import weakref

import numpy as np
import pytest

from jaxris.inference.export import RECIPE_FILE, read_recipe
from jaxris.inference.sam_predictor import SamPredictor
from jaxris.models.sam.sam import Sam, sam_config
from flax import nnx


def _tiny_sam():
  return Sam(sam_config("vit_b", img_size=64, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                        global_attn_indexes=(1,), window_size=4), rngs=nnx.Rngs(0))


def test_dropped_sam_predictor_is_freed():
  """jit with `self` static kept every predictor (and its weights) alive in JAX's cache."""
  predictor = SamPredictor(_tiny_sam())
  predictor.set_image(np.zeros((40, 60, 3), np.uint8))
  predictor.predict(point_coords=[[10, 10]], point_labels=[1])
  ref = weakref.ref(predictor)
  del predictor
  gc.collect()
  assert ref() is None


def test_missing_recipe_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="not a model exported by jaxris.train"):
    read_recipe(str(tmp_path))
  assert read_recipe(str(tmp_path), required=False) is None
  (tmp_path / RECIPE_FILE).write_text(json.dumps({"threshold": 0.35}))
  assert read_recipe(str(tmp_path))["threshold"] == 0.35


def test_verdict_names_what_the_model_can_and_cannot_do():
  from jaxris.inference import evaluation as ev
  by_type = {"attribute": {"mIoU": 85.2, "count": 10}, "superlative": {"mIoU": 61.0, "count": 10},
             "position": {"mIoU": 45.0, "count": 10}, "relation": {"mIoU": 12.0, "count": 10}}
  line = ev.verdict({"mIoU": 50.0, "by_type": by_type}, "val")
  assert line == ("verdict on val (mIoU per expression type): the model finds the target of attribute (85) and "
                  "superlative (61) expressions; is unreliable on position (45) expressions; mostly misses "
                  "relation (12) expressions.")
  table = ev.format_by_type({"val": {"by_type": by_type}, "testA": {"by_type": {"relation": {"mIoU": 3.0, "count": 2}}}})
  assert "| relation | 12.00 (10) | 3.00 (2) |" in table and "| attribute | 85.20 (10) | - |" in table
  report = ev.format_report({"val": {**{k: 50.0 for k in ev.REPORTED}, "by_type": by_type}}, "run")
  assert report.splitlines()[0].startswith("| run | oIoU") and report.endswith(line)
