"""Evaluate a trained model with the papers' metrics (oIoU, mIoU, P@0.5/0.7/0.9).

  python -m jaxris.evaluate --config configs/ldit_vitb.py:refshapes --workdir runs/ldit [--split val]

Reads the exported weights in DIR/model (written by jaxris.train), predicts every expression of
the split and scores it at the original image size. DIT (``eval_resize="binary"``, the default):
sigmoid(logits) > config.threshold (0.35) at the model input size, then the binary mask is
cropped and resized (any value > 0 counts). EVF-SAM (``eval_resize="logits"``): the logits are
cropped and resized, as SAM's postprocess_masks does, then thresholded (0.5, i.e. logits > 0). Writes
DIR/eval_<split>.json ({"oIoU", "mIoU", "P@0.5", "P@0.7", "P@0.9"}, percent; on RefShapes also
"by_type": the same per expression type) and prints the paper's table layout, then on RefShapes the
mIoU per expression type (attribute, superlative, position, relation) and a one-line verdict. Models with
a no-target head (the bridge on gRefCOCO or RefShapes' *_nt splits) add gIoU, cIoU, N-acc and T-acc. An
oracle model (the bridge with sparse_query=gt_category) is refused unless --allow_oracle.
"""

from __future__ import annotations

import os
import sys

import jax

from jaxris.configs import resolve_config_path
from jaxris.data.inputs import eval_examples, expression_type_of, preprocess_for
from jaxris.inference.evaluation import evaluate_split, format_report, forward_fn, write_result
from jaxris.inference.export import load_trained
from jaxris.models.functional import split_params
from jaxris.sharding import make_mesh


def main(argv) -> int:
  from absl import flags

  cfg = flags.FLAGS.config
  workdir = flags.FLAGS.workdir
  model_dir = os.path.join(workdir, "model")
  if not os.path.isdir(model_dir):
    print(f"jaxris.evaluate: error: {model_dir} not found: train first (python -m jaxris.train "
          f"--config ... --workdir {workdir})", file=sys.stderr)
    return 2
  model, tokenizer = load_trained(model_dir)
  oracle = bool(getattr(getattr(model, "cfg", None), "oracle", False))
  if oracle and not flags.FLAGS.allow_oracle:
    print(f"jaxris.evaluate: error: {model_dir} is an ORACLE model: sparse_query='gt_category' feeds it the "
          "annotated category of every target (the official RefCOCO configs' ground-truth leak), so its scores are "
          "not referring segmentation results. Pass --allow_oracle to evaluate it anyway (the results are marked "
          "\"oracle\": true)", file=sys.stderr)
    return 2
  if oracle:
    print("jaxris.evaluate: ORACLE evaluation (sparse_query='gt_category' reads the annotated category)",
          file=sys.stderr)
  model_inputs = model.BATCH_INPUTS
  mesh = make_mesh(tuple(cfg.mesh))
  graphdef, params, rest = split_params(model)
  forward = forward_fn(graphdef, rest)
  splits = [flags.FLAGS.split] if flags.FLAGS.split else list(cfg.data.eval_splits)
  results = {}
  for split in splits:
    results[split] = evaluate_split(forward, params, eval_examples(cfg, split), preprocess_for(cfg), tokenizer,
                                    cfg.batch_size, cfg.threshold, mesh, desc=split, model_inputs=model_inputs,
                                    resize=cfg.eval_resize, type_of=expression_type_of(cfg))
    write_result(workdir, split, results[split], oracle=oracle)
  if jax.process_index() == 0:
    print(format_report(results, cfg.data.name + (" (ORACLE: ground-truth category)" if oracle else "")))
  return 0


def _define_flags():
  from absl import flags
  from ml_collections import config_flags

  config_flags.DEFINE_config_file("config", None, "recipe file (configs/*.py[:args])", lock_config=False)
  flags.DEFINE_string("workdir", None, "training directory holding model/")
  flags.DEFINE_string("split", None, "one split (default: the recipe's eval_splits)")
  flags.DEFINE_bool("allow_oracle", False, "evaluate a model that reads ground truth (the bridge's "
                    "sparse_query=gt_category); its results are marked \"oracle\": true")
  flags.mark_flags_as_required(["config", "workdir"])


if __name__ == "__main__":
  from absl import app

  sys.argv = resolve_config_path(sys.argv)
  _define_flags()
  app.run(lambda argv: sys.exit(main(argv)))
