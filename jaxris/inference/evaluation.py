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
NO_TARGET = ("gIoU", "cIoU", "N-acc", "T-acc")  # gRefCOCO's, reported where the split has no-target expressions


def forward_fn(graphdef, rest):
  """jit(params, *inputs) -> logits (or, for a model with a no-target head, {"logits", "no_target" [B, 2]}),
  for flat parameter dicts; inputs as the model's BATCH_INPUTS."""
  @jax.jit
  def forward(params, *inputs):
    return merge(graphdef, params, rest)(*inputs)
  return forward


DIT_INPUTS = ("image", "input_ids", "attention_mask")


def evaluate_split(forward, params, examples, preprocess, tokenizer, batch_size: int, threshold: float, mesh,
                   limit: int = 0, desc: str = "eval", model_inputs=DIT_INPUTS, resize: str = "binary",
                   type_of=None) -> dict:
  """Scores `examples` (every sentence; the first `limit` examples if > 0); returns the metrics dict.

  `model_inputs`: the batch fields `forward` takes after the parameters; `resize`: "binary" (DIT:
  threshold, then resize to the original size) or "logits" (SAM/EVF-SAM: resize, then threshold).
  `type_of(sentence) -> str` (e.g. RefShapes' expression families): the result also holds
  ``by_type``, the metrics of each type's expressions.
  """
  if resize not in ("binary", "logits"):
    raise ValueError(f"resize must be 'binary' or 'logits', got {resize!r}")
  examples = list(examples)[:limit] if limit else list(examples)
  ds = make_dataset(examples, preprocess, tokenizer, batch_size, train=False)
  cut = math.log(threshold / (1 - threshold))  # sigmoid(x) > t  <=>  x > logit(t)
  acc = ris_metrics.RisMetrics(threshold=0.0)
  # Every process holds every example, so the sorted types are the same everywhere (one allgather).
  types = sorted({type_of(s) for ex in examples for s in ex["sentences"]}) if type_of else []
  by_type = {t: ris_metrics.RisMetrics(threshold=0.0) for t in types}
  num_batches = int(ds.cardinality())
  for batch in tqdm(ds.as_numpy_iterator(), total=num_batches, desc=desc, leave=False,
                    disable=jax.process_index() != 0):
    inputs = global_batch({k: batch[k] for k in model_inputs}, mesh)
    out = forward(params, *(inputs[k] for k in model_inputs))
    to_host = lambda a: np.asarray(multihost_utils.global_array_to_host_local_array(a, mesh, P(BATCH)))
    said_empty = None
    if isinstance(out, dict):  # a no-target head (the bridge on gRefCOCO): argmax 1 = "no target"
      said_empty = np.argmax(to_host(out["no_target"]), axis=-1) == 1
      out = out["logits"]
    local = to_host(out)
    if resize == "binary":
      # As DIT's test.py: the binary mask is resized to the original size, any value > 0 counts.
      restored = ris_metrics.restore_original((local > cut).astype(np.float32), batch)
    else:
      restored = [(r > cut).astype(np.float32) for r in ris_metrics.restore_original(local, batch)]
    gt = original_masks(examples, batch)
    flags = {}
    if said_empty is not None:  # the head's answer decides; its "no target" empties the mask
      restored = [np.zeros_like(r) if e else r for r, e in zip(restored, said_empty)]
      flags = dict(no_target=batch["no_target"], pred_no_target=said_empty)
    acc.update(restored, gt, valid=batch["_mask"], **flags)
    for i, (e, j, valid) in enumerate(zip(batch["example_id"], batch["sentence_index"], batch["_mask"])):
      if type_of and valid:
        one = {k: v[i:i + 1] for k, v in flags.items()}
        by_type[type_of(examples[int(e)]["sentences"][int(j)])].update([restored[i]], [gt[i]], **one)
  states = np.stack([acc.state()] + [m.state() for m in by_type.values()])
  total = multihost_utils.process_allgather(states).reshape(-1, *states.shape).sum(0)
  result = ris_metrics.RisMetrics.from_state(total[0]).result()
  if types:
    result["by_type"] = {t: ris_metrics.RisMetrics.from_state(s).result() for t, s in zip(types, total[1:])}
  return result


def format_table(results: dict[str, dict], title: str) -> str:
  """The papers' layout: one row per split, oIoU / mIoU / P@X columns."""
  cols = REPORTED + (NO_TARGET if any("N-acc" in r for r in results.values()) else ())
  head = f"| {title} | " + " | ".join(cols) + " |"
  lines = [head, "|" + "---|" * (len(cols) + 1)]
  for split, r in results.items():
    lines.append(f"| {split} | " + " | ".join(f"{r[k]:.2f}" if k in r else "-" for k in cols) + " |")
  return "\n".join(lines)


def format_by_type(results: dict[str, dict]) -> str:
  """mIoU per expression type (rows) and split (columns), with each cell's number of expressions."""
  types = sorted({t for r in results.values() for t in r.get("by_type", {})})
  lines = ["| expression type | " + " | ".join(f"{split} mIoU (n)" for split in results) + " |",
           "|" + "---|" * (len(results) + 1)]
  for t in types:
    cells = [f"{r['by_type'][t]['mIoU']:.2f} ({r['by_type'][t]['count']})" if t in r.get("by_type", {}) else "-"
             for r in results.values()]
    lines.append(f"| {t} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


# mIoU bands of the verdict: at or above `GOOD` the model finds the target, below `POOR` it mostly does not.
GOOD, POOR = 60.0, 40.0


def verdict(result: dict, split: str) -> str:
  """One line on what the model can and cannot do, from the mIoU of each expression type on `split`."""
  by_type = result.get("by_type")
  if not by_type:
    return f"{split}: mIoU {result['mIoU']:.1f} (no expression types to break it down by)"
  ranked = sorted(by_type.items(), key=lambda kv: -kv[1]["mIoU"])
  bands = (("finds the target of", GOOD, math.inf), ("is unreliable on", POOR, GOOD),
           ("mostly misses", -math.inf, POOR))
  said = []
  for what, lo, hi in bands:
    named = [f"{t} ({r['mIoU']:.0f})" for t, r in ranked if lo <= r["mIoU"] < hi]
    if named:
      said.append(f"{what} {' and '.join(named) if len(named) < 3 else ', '.join(named)} expressions")
  return f"verdict on {split} (mIoU per expression type): the model " + "; ".join(said) + "."


def format_report(results: dict[str, dict], title: str) -> str:
  """What a finished evaluation prints: the papers' table and, where the data has expression types,
  the mIoU per type and the verdict on the first split."""
  report = format_table(results, title)
  if any("by_type" in r for r in results.values()):
    first = next(iter(results))
    report += f"\n\n{format_by_type(results)}\n\n{verdict(results[first], first)}"
  return report


def write_result(workdir: str, split: str, result: dict, oracle: bool = False) -> str:
  """DIR/eval_<split>.json: the reported metrics (+ N-acc/T-acc/gIoU/cIoU where the split has no-target
  expressions, by_type where it has types); ``"oracle": true`` for a model that read ground truth."""
  path = os.path.join(workdir, f"eval_{split}.json")
  if jax.process_index() == 0:
    out = {k: float(result[k]) for k in REPORTED + (NO_TARGET if "N-acc" in result else ())}
    if oracle:
      out["oracle"] = True
    if "by_type" in result:
      out["by_type"] = {t: {k: float(r[k]) for k in (*REPORTED, "count")} for t, r in result["by_type"].items()}
    with open(path, "w") as f:
      json.dump(out, f, indent=2)
  return path
