"""A trained model as a directory that predictors load: weights, tokenizer files and the recipe.

``DIR/model/`` (written by ``jaxris.train``) holds ``config.json`` + ``params.safetensors`` (the
weights format of ``jaxris.weights.store``), the tokenizer's vocabulary, and ``recipe.json``: what
a predictor needs to reproduce the trained recipe's answers (threshold, text length, the image
preprocessing) plus the whole training config for the record.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import jax
import numpy as np

from jaxris.build import fixed_length
from jaxris.text.bert_tokenizer import BertTokenizer
from jaxris.weights import bridge as bridge_weights
from jaxris.weights import dit as dit_weights
from jaxris.weights import evf_sam, store

RECIPE_FILE = "recipe.json"


def recipe_of(cfg, preprocess) -> dict:
  """What an export records of a training config `cfg` and its PreprocessConfig."""
  return {"name": cfg.name, "family": cfg.model.family, "threshold": float(cfg.threshold),
          "eval_resize": cfg.eval_resize, "max_tokens": int(cfg.model.max_tokens),
          "preprocess": dataclasses.asdict(preprocess), "config": json.loads(cfg.to_json_best_effort())}


def export_model(out: str, family: str, model_config: dict, params: dict, vocab_file: str | None,
                 recipe: dict) -> str:
  """Writes the export to `out`; every process calls it (parameters are gathered), process 0 writes."""
  from jax.experimental import multihost_utils

  # Arrays spread over several processes are gathered (a collective: every process, same order);
  # host-local ones (buffers such as SAM's positional-encoding matrix) are the same everywhere.
  host = {k: multihost_utils.process_allgather(v, tiled=True)
          if isinstance(v, jax.Array) and not v.is_fully_addressable else v for k, v in params.items()}
  if jax.process_index() == 0:
    store.save(out, family, model_config, {k: np.asarray(v) for k, v in host.items()})
    if vocab_file:  # BERT's WordPiece vocabulary, or BEiT-3's sentencepiece model under EVF-SAM's file name
      name = "vocab.txt" if vocab_file.endswith(".txt") else "sentencepiece.bpe.model"
      shutil.copy(vocab_file, os.path.join(out, name))
    with open(os.path.join(out, RECIPE_FILE), "w") as f:
      json.dump(recipe, f, indent=2)
  return out


def read_recipe(model_dir: str, required: bool = True) -> dict | None:
  """The recipe recorded in an export; None for a converted release (`required=False`)."""
  path = os.path.join(model_dir, RECIPE_FILE)
  if not os.path.isfile(path):
    if required:
      raise FileNotFoundError(f"{path} not found: {model_dir} is not a model exported by jaxris.train "
                              "(python -m jaxris.train --config ... --workdir RUN writes RUN/model)")
    return None
  with open(path) as f:
    return json.load(f)


def weights_family(directory: str) -> str | None:
  """The family recorded in DIR/config.json by the converters and exports; None when there is none."""
  try:
    with open(os.path.join(directory, store.CONFIG_FILE)) as f:
      return json.load(f).get("family")
  except (OSError, ValueError, AttributeError):
    return None  # the loader then reports the missing or broken directory


def load_trained(model_dir: str):
  """An export -> (model, tokenizer padding every text to the recipe's length): what evaluation batches need."""
  recipe = read_recipe(model_dir)
  family = weights_family(model_dir)
  if family == evf_sam.FAMILY:
    model, tokenizer = evf_sam.load(model_dir)
  elif family == bridge_weights.FAMILY:
    model, tokenizer = bridge_weights.load(model_dir), BertTokenizer.from_pretrained_dir(model_dir)
  else:
    model, tokenizer = dit_weights.load(model_dir), BertTokenizer.from_pretrained_dir(model_dir)
  return model, fixed_length(tokenizer, recipe["max_tokens"])
