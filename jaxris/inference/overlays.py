"""Pictures for people: a text-prompted model's masks on dataset examples, next to the ground truth."""

from __future__ import annotations

import os
import re

import numpy as np
from PIL import Image

from jaxris.data.image_io import read_image
from jaxris.inference.text_predictors import load_text_predictor
from jaxris.visualize import comparison


def write_examples(model_dir: str, examples: list[dict], out_dir: str) -> list[str]:
  """Pictures of the model's masks for dataset examples (their first sentence): the phrase and the IoU
  on top, ground truth in green on the left, the prediction in blue on the right."""
  predictor = load_text_predictor(model_dir)[1].predict  # DIT, EVF-SAM or the bridge: logits, > 0 = mask
  os.makedirs(out_dir, exist_ok=True)
  paths = []
  for i, ex in enumerate(examples):
    image = ex["image"] if "image" in ex else read_image(ex["image_path"])
    text = ex["sentences"][0]
    mask = predictor(image, text) > 0
    side = comparison(image, np.asarray(ex["mask"]) > 0, mask, text)
    path = os.path.join(out_dir, f"{i:02d}_{re.sub(r'[^a-z0-9]+', '_', text.lower()).strip('_')}.png")
    Image.fromarray(side).save(path)
    paths.append(path)
  return paths
