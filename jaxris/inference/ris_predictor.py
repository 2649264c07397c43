"""Referring segmentation from a trained model directory: an image and a phrase -> mask logits."""

from __future__ import annotations

import dataclasses
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np

PREPROCESS_FILE = "preprocess.json"


def save_preprocess(model_dir: str, preprocess) -> None:
  with open(os.path.join(model_dir, PREPROCESS_FILE), "w") as f:
    json.dump(dataclasses.asdict(preprocess), f, indent=2)


class RisPredictor:
  """Loads DIR/model (jaxris.train's export) once; ``predict(image, text)`` many times."""

  def __init__(self, model_dir: str, threshold: float = 0.35):
    from flax import nnx

    from jaxris.text.bert_tokenizer import BertTokenizer
    from jaxris.data.transforms import preprocess_config
    from jaxris.weights import dit as dit_weights

    path = os.path.join(model_dir, PREPROCESS_FILE)
    if not os.path.isfile(path):
      raise FileNotFoundError(f"{path} not found: {model_dir} is not a model exported by jaxris.train")
    with open(path) as f:
      self.preprocess = preprocess_config(**{k: v for k, v in json.load(f).items()})
    self.model = dit_weights.load(model_dir)
    self.tokenizer = BertTokenizer.from_pretrained_dir(model_dir, max_length=20)
    self.cut = math.log(threshold / (1 - threshold))  # sigmoid(x) > threshold  <=>  x > cut
    self._forward = nnx.jit(lambda m, x, ids, mask: m(x, ids, mask))

  def predict(self, image: np.ndarray, text: str) -> np.ndarray:
    """uint8 RGB [H, W, 3] and a phrase -> float32 mask logits [H, W] at the original size,
    shifted so that > 0 means sigmoid(logit) > threshold."""
    from jaxris.data.transforms import preprocess
    from jaxris.metrics import restore_original

    inp = preprocess(image, None, text, self.preprocess, train=False)
    tokens = self.tokenizer([inp["text"]])
    logits = self._forward(self.model, jnp.asarray(inp["image"])[None], jnp.asarray(tokens["input_ids"]),
                           jnp.asarray(tokens["attention_mask"]))
    restored = restore_original(np.asarray(jax.device_get(logits))[0], inp)
    return (restored - self.cut).astype(np.float32)
