"""Evaluate a trained model with the papers' metrics (oIoU, mIoU, P@0.5/0.7/0.9).

  python -m jaxris.evaluate --config configs/ldit_vitb.py:refshapes --workdir runs/ldit [--split val]

Reads the exported weights in DIR/model (written by jaxris.train), predicts every expression of
the split, thresholds sigmoid(logits) > config.threshold (0.35, DIT) at the model input size,
crops the padding, resizes to the original image size and scores there. Writes
DIR/eval_<split>.json ({"oIoU", "mIoU", "P@0.5", "P@0.7", "P@0.9"}, percent) and prints the
paper's table layout.
"""

from __future__ import annotations

import json
import math
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import PartitionSpec as P

REPORTED = ("oIoU", "mIoU", "P@0.5", "P@0.7", "P@0.9")


def forward_fn(graphdef, rest):
  """jit(params, images, input_ids, attention_mask) -> logits, for flat parameter dicts."""
  from jaxris.models.functional import merge

  @jax.jit
  def forward(params, images, input_ids, attention_mask):
    model = merge(graphdef, params, rest)
    return model(images, input_ids, attention_mask)
  return forward


def evaluate_split(forward, params, examples, preprocess, tokenizer, batch_size: int, threshold: float, mesh,
                   limit: int = 0, desc: str = "eval") -> dict:
  """Scores `examples` (every sentence; the first `limit` examples if > 0); returns the metrics dict."""
  from jax.experimental import multihost_utils
  from tqdm import tqdm

  from jaxris import metrics as ris_metrics
  from jaxris.data.pipeline import make_dataset, original_masks
  from jaxris.sharding import BATCH, global_batch

  examples = list(examples)[:limit] if limit else list(examples)
  ds = make_dataset(examples, preprocess, tokenizer, batch_size, train=False)
  cut = math.log(threshold / (1 - threshold))  # sigmoid(x) > t  <=>  x > logit(t)
  acc = ris_metrics.RisMetrics(threshold=0.0)
  num_batches = int(ds.cardinality())
  for batch in tqdm(ds.as_numpy_iterator(), total=num_batches, desc=desc, leave=False,
                    disable=jax.process_index() != 0):
    inputs = global_batch({k: batch[k] for k in ("image", "input_ids", "attention_mask")}, mesh)
    logits = forward(params, inputs["image"], inputs["input_ids"], inputs["attention_mask"])
    local = multihost_utils.global_array_to_host_local_array(logits, mesh, P(BATCH))
    binary = (np.asarray(local) > cut).astype(np.float32)
    # As DIT's test.py: the binary mask is resized to the original size, any value > 0 counts.
    restored = ris_metrics.restore_original(binary, batch)
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


def main(argv) -> int:
  from absl import flags

  from jaxris.data.inputs import eval_examples, preprocess_for
  from jaxris.models.functional import split_params
  from jaxris.sharding import make_mesh
  from jaxris.weights import dit as dit_weights
  from jaxris.data.bert_tokenizer import BertTokenizer

  cfg = flags.FLAGS.config
  workdir = flags.FLAGS.workdir
  model_dir = os.path.join(workdir, "model")
  if not os.path.isdir(model_dir):
    print(f"jaxris.evaluate: error: {model_dir} not found: train first (python -m jaxris.train "
          f"--config ... --workdir {workdir})", file=sys.stderr)
    return 2
  model = dit_weights.load(model_dir)
  tokenizer = BertTokenizer.from_pretrained_dir(model_dir, max_length=cfg.data.max_tokens)
  mesh = make_mesh(tuple(cfg.mesh))
  graphdef, params, rest = split_params(model)
  forward = forward_fn(graphdef, rest)
  splits = [flags.FLAGS.split] if flags.FLAGS.split else list(cfg.data.eval_splits)
  results = {}
  for split in splits:
    results[split] = evaluate_split(forward, params, eval_examples(cfg, split), preprocess_for(cfg), tokenizer,
                                    cfg.batch_size, cfg.threshold, mesh, desc=split)
    write_result(workdir, split, results[split])
  if jax.process_index() == 0:
    print(format_table(results, cfg.data.name))
  return 0


def _define_flags():
  from absl import flags
  from ml_collections import config_flags

  config_flags.DEFINE_config_file("config", None, "recipe file (configs/*.py[:args])", lock_config=False)
  flags.DEFINE_string("workdir", None, "training directory holding model/")
  flags.DEFINE_string("split", None, "one split (default: the recipe's eval_splits)")
  flags.mark_flags_as_required(["config", "workdir"])


if __name__ == "__main__":
  from absl import app

  _define_flags()
  app.run(lambda argv: sys.exit(main(argv)))
