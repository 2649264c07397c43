"""Referring segmentation from a SAM+CLIP bridge exported by jaxris.train: an image and a phrase ->
mask logits, and, with the no-target head (gRefCOCO, RefShapes' no-target splits), whether the phrase
fits nothing in the image."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxris.data.transforms import preprocess, preprocess_config
from jaxris.inference.export import read_recipe
from jaxris.metrics import restore_original
from jaxris.text.bert_tokenizer import BertTokenizer
from jaxris.weights import bridge as bridge_weights


class OracleModelError(ValueError):
  """The model reads the ground-truth category (sparse_query='gt_category'): no free-text prediction."""


class BridgePredictor:
  """Loads DIR/model once; ``predict(image, text)`` -> logits (> 0 = mask; all negative for "no target"),
  ``predict_with_target(image, text)`` -> (logits, no_target: bool | None)."""

  def __init__(self, model_dir: str, threshold: float | None = None):
    recipe = read_recipe(model_dir)
    self.model = bridge_weights.load(model_dir)
    if self.model.cfg.oracle:
      raise OracleModelError(f"{model_dir} is an ORACLE bridge (sparse_query='gt_category'): it needs the annotated "
                             "category of the target, which a free-text prompt does not have; train with the "
                             "default sparse_query=bert_cls to predict")
    self.preprocess = preprocess_config(**recipe["preprocess"])
    self.threshold = recipe["threshold"] if threshold is None else threshold
    self.tokenizer = BertTokenizer.from_pretrained_dir(model_dir, max_length=recipe["max_tokens"])
    self.cut = math.log(self.threshold / (1 - self.threshold))
    graphdef, self._state = nnx.split(self.model)
    self._forward = jax.jit(functools.partial(_forward, graphdef))

  @property
  def has_no_target_head(self) -> bool:
    return self.model.cfg.no_target_head

  def predict_with_target(self, image: np.ndarray, text: str):
    inp = preprocess(image, None, text, self.preprocess, train=False)
    tokens = self.tokenizer([inp["text"]])
    out = self._forward(self._state, jnp.asarray(inp["image"])[None], jnp.asarray(tokens["input_ids"]),
                        jnp.asarray(tokens["attention_mask"]))
    no_target = None
    if isinstance(out, dict):
      no_target = bool(np.argmax(np.asarray(out["no_target"])[0]) == 1)
      out = out["logits"]
    restored = restore_original(np.asarray(jax.device_get(out))[0], inp) - self.cut
    if no_target:
      restored = np.minimum(restored, -1.0)  # the head's "no target" empties the mask
    return restored.astype(np.float32), no_target

  def predict(self, image: np.ndarray, text: str) -> np.ndarray:
    return self.predict_with_target(image, text)[0]


def _forward(graphdef, state, images, input_ids, attention_mask):
  return nnx.merge(graphdef, state)(images, input_ids, attention_mask)
