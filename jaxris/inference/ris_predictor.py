"""Referring segmentation from a DIT-SAM model exported by jaxris.train: an image and a phrase -> mask logits."""

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
from jaxris.weights import dit as dit_weights


class RisPredictor:
  """Loads DIR/model (jaxris.train's export) once; ``predict(image, text)`` many times.

  The trained recipe's preprocessing, text length and threshold come from the export's recipe.json;
  `threshold` overrides the last.
  """

  def __init__(self, model_dir: str, threshold: float | None = None):
    recipe = read_recipe(model_dir)
    self.preprocess = preprocess_config(**recipe["preprocess"])
    self.threshold = recipe["threshold"] if threshold is None else threshold
    self.model = dit_weights.load(model_dir)
    self.tokenizer = BertTokenizer.from_pretrained_dir(model_dir, max_length=recipe["max_tokens"])
    self.cut = math.log(self.threshold / (1 - self.threshold))  # sigmoid(x) > threshold  <=>  x > cut
    graphdef, self._state = nnx.split(self.model)
    # Jitted over the graph only, so that the jit cache does not keep the predictor alive.
    self._forward = jax.jit(functools.partial(_forward, graphdef))

  def predict_with_target(self, image: np.ndarray, text: str):
    """(predict(image, text), None): a DIT model has no no-target head."""
    return self.predict(image, text), None

  def predict(self, image: np.ndarray, text: str) -> np.ndarray:
    """uint8 RGB [H, W, 3] and a phrase -> float32 mask logits [H, W] at the original size,
    shifted so that > 0 means sigmoid(logit) > threshold."""
    inp = preprocess(image, None, text, self.preprocess, train=False)
    tokens = self.tokenizer([inp["text"]])
    logits = self._forward(self._state, jnp.asarray(inp["image"])[None], jnp.asarray(tokens["input_ids"]),
                           jnp.asarray(tokens["attention_mask"]))
    restored = restore_original(np.asarray(jax.device_get(logits))[0], inp)
    return (restored - self.cut).astype(np.float32)


def _forward(graphdef, state, images, input_ids, attention_mask):
  return nnx.merge(graphdef, state)(images, input_ids, attention_mask)
