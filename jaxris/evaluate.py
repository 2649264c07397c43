"""Evaluate a trained model with the papers' metrics (oIoU, mIoU, P@0.5/0.7/0.9).

  python -m jaxris.evaluate --config configs/ldit_vitb.py:refshapes --workdir runs/ldit [--split val]

Reads the exported weights in DIR/model (written by jaxris.train), predicts every expression of
the split and scores it at the original image size. DIT (``eval_resize="binary"``, the default):
sigmoid(logits) > config.threshold (0.35) at the model input size, then the binary mask is
cropped and resized (any value > 0 counts). EVF-SAM (``eval_resize="logits"``): the logits are
cropped and resized, as SAM's postprocess_masks does, then thresholded (0.5, i.e. logits > 0). Writes
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
  """jit(params, *inputs) -> logits, for flat parameter dicts; inputs as the model's BATCH_INPUTS."""
  from jaxris.models.functional import merge

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
  from jax.experimental import multihost_utils
  from tqdm import tqdm

  from jaxris import metrics as ris_metrics
  from jaxris.data.loader import make_dataset
  from jaxris.data.transforms import original_masks
  from jaxris.sharding import BATCH, global_batch

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


def main(argv) -> int:
  from absl import flags

  from jaxris.data.inputs import eval_examples, preprocess_for
  from jaxris.models.functional import split_params
  from jaxris.sharding import make_mesh

  cfg = flags.FLAGS.config
  workdir = flags.FLAGS.workdir
  model_dir = os.path.join(workdir, "model")
  if not os.path.isdir(model_dir):
    print(f"jaxris.evaluate: error: {model_dir} not found: train first (python -m jaxris.train "
          f"--config ... --workdir {workdir})", file=sys.stderr)
    return 2
  model, tokenizer = load_model(model_dir, cfg)
  model_inputs = type(model).BATCH_INPUTS
  mesh = make_mesh(tuple(cfg.mesh))
  graphdef, params, rest = split_params(model)
  forward = forward_fn(graphdef, rest)
  splits = [flags.FLAGS.split] if flags.FLAGS.split else list(cfg.data.eval_splits)
  results = {}
  for split in splits:
    results[split] = evaluate_split(forward, params, eval_examples(cfg, split), preprocess_for(cfg), tokenizer,
                                    cfg.batch_size, cfg.threshold, mesh, desc=split, model_inputs=model_inputs,
                                    resize=cfg.get("eval_resize", "binary"))
    write_result(workdir, split, results[split])
  if jax.process_index() == 0:
    print(format_table(results, cfg.data.name))
  return 0


def load_model(model_dir: str, cfg):
  """An exported model directory -> (model, tokenizer padding to the recipe's text length)."""
  from jaxris import build as ris

  if ris.family(cfg.model) == "evf":
    from jaxris.weights import evf_sam
    model, tokenizer = evf_sam.load(model_dir)
    tokenizer.max_length, tokenizer.pad_to_max_length = cfg.model.max_tokens, True
    return model, tokenizer
  from jaxris.text.bert_tokenizer import BertTokenizer
  from jaxris.weights import dit as dit_weights
  return dit_weights.load(model_dir), BertTokenizer.from_pretrained_dir(model_dir, max_length=cfg.data.max_tokens)


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
