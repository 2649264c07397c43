"""Scoring a model on a dataset split with the papers' metrics (oIoU, mIoU, P@0.5/0.7/0.9).

DIT (``resize="binary"``): sigmoid(logits) > threshold at the model input size, then the binary mask
is cropped and resized to the original image (any value > 0 counts), as DIT's test.py. EVF-SAM
(``resize="logits"``): the logits are cropped and resized as SAM's postprocess_masks does, then
thresholded, as EVF-SAM's eval.py. Every process scores its share; the counts are summed.
"""

from __future__ import annotations

import json
import math
import os

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from jaxris import metrics as ris_metrics
from jaxris.data.loader import make_dataset
from jaxris.data.transforms import original_masks
from jaxris.models.functional import merge
from jaxris.sharding import BATCH, global_batch

REPORTED = ("oIoU", "mIoU", "P@0.5", "P@0.7", "P@0.9")


def forward_fn(graphdef, rest):
  """jit(params, *inputs) -> logits, for flat parameter dicts; inputs as the model's BATCH_INPUTS."""
  @jax.jit
  def forward(params, *inputs):
    return merge(graphdef, params, rest)(*inputs)
  return forward


DIT_INPUTS = ("image", "input_ids", "attention_mask")


def evaluate_split(forward, params, examples, preprocess, tokenizer, batch_size: int, threshold: float, mesh,
                   limit: int = 0, desc: str = "eval", model_inputs=DIT_INPUTS, resize: str = "binary") -> dict:
  """Scores `examples` (every sentence; the first `limit` examples if > 0); returns the metrics dict.

  `model_inputs`: the batch fields `forward` takes after the parameters; `resize`: "binary" (DIT:
  threshold, then resize to the original size) or "logits" (SAM/EVF-SAM: resize, then threshold).
  """
  if resize not in ("binary", "logits"):
    raise ValueError(f"resize must be 'binary' or 'logits', got {resize!r}")
  examples = list(examples)[:limit] if limit else list(examples)
  ds = make_dataset(examples, preprocess, tokenizer, batch_size, train=False)
  cut = math.log(threshold / (1 - threshold))  # sigmoid(x) > t  <=>  x > logit(t)
  acc = ris_metrics.RisMetrics(threshold=0.0)
  num_batches = int(ds.cardinality())
  for batch in tqdm(ds.as_numpy_iterator(), total=num_batches, desc=desc, leave=False,
                    disable=jax.process_index() != 0):
    inputs = global_batch({k: batch[k] for k in model_inputs}, mesh)
    logits = forward(params, *(inputs[k] for k in model_inputs))
    local = np.asarray(multihost_utils.global_array_to_host_local_array(logits, mesh, P(BATCH)))
    if resize == "binary":
      # As DIT's test.py: the binary mask is resized to the original size, any value > 0 counts.
      restored = ris_metrics.restore_original((local > cut).astype(np.float32), batch)
    else:
      restored = [(r > cut).astype(np.float32) for r in ris_metrics.restore_original(local, batch)]
    acc.update(restored, original_masks(examples, batch), valid=batch["_mask"])
  total = multihost_utils.process_allgather(acc.state()).reshape(-1, acc.state().size).sum(0)
  return ris_metrics.RisMetrics.from_state(total).result()


def format_table(results: dict[str, dict], title: str) -> str:
  """The papers' layout: one row per split, oIoU / mIoU / P@X columns."""
  head = f"| {title} | " + " | ".join(REPORTED) + " |"
  lines = [head, "|" + "---|" * (len(REPORTED) + 1)]
  for split, r in results.items():
    lines.append(f"| {split} | " + " | ".join(f"{r[k]:.2f}" for k in REPORTED) + " |")
  return "\n".join(lines)


def write_result(workdir: str, split: str, result: dict) -> str:
  path = os.path.join(workdir, f"eval_{split}.json")
  if jax.process_index() == 0:
    with open(path, "w") as f:
      json.dump({k: float(result[k]) for k in REPORTED}, f, indent=2)
  return path
