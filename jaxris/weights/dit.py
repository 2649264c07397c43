"""Official DIT-SAM checkpoints (wysnzzzz/DIT, models/<variant>/net.py) -> jaxris RisSam.

The official ``Net`` holds ``visual_encoder`` (SAM's ViT + the scheme's text-slot parameters:
``probs[.N]``, ``prob_text``, ``tokens``, ``cross.N.*``, ``ln.N``), ``prompt_encoder``,
``mask_decoder``, ``lang_encoder.bert`` (BERT) and ``text_proj``; jaxris mirrors those names, so
the table is the DIT rules below, SAM's rules and BERT's under ``lang_encoder.``. Released
files are DDP dicts ``{"epoch", "state_dict": {"module.<name>": ...}, "optimizer", "scheduler", "lr"}``
(official train.py): the wrapper and prefix are removed before any tensor is read (jaxris.weights.reader),
so the optimizer state is never converted. Two tensors the official forward never reads (``query_embeddings`` and the
``self_attention`` MultiheadAttention) are dropped by name. E-DIT and L-DIT checkpoints have the
same tensors, so the scheme must be given (and is for every checkpoint: a wrong one fails with the
names that do not fit).
"""

from __future__ import annotations

import os
import re

import numpy as np
from flax import nnx

from jaxris.models.ris.dit_sam import RisConfig, RisSam
from jaxris.weights import bert as bert_weights
from jaxris.weights import sam as sam_weights
from jaxris.weights import reader, store
from jaxris.weights.mapping import Rule, convert, prefixed

FAMILY = "dit"
# Ahead of SAM's rules, which would take the cross-attention LayerNorms for SAM's (``scale``) or
# for Linear weights (``kernel``): DIT's own LayerNorm keeps ``weight``; the learnt slot tokens
# are a plain tensor. Every other new tensor (probs, cross.N.linear_*, ffn.mlp.*) is a Linear.
_DIT_NORMS = r"visual_encoder\.(?:ln\.\d+|cross\.\d+\.norm[12])"
DIT_RULES = [
    Rule(rf"({_DIT_NORMS})\.(weight|bias)", r"\1.\2"),
    Rule(r"visual_encoder\.tokens", "visual_encoder.tokens"),
]
RULES = DIT_RULES + prefixed(bert_weights.RULES, "lang_encoder.", "lang_encoder.") + sam_weights.RULES
IGNORE = [r"query_embeddings", r"self_attention\..*"] + [r"lang_encoder\." + p for p in bert_weights.IGNORE]


def unwrap(checkpoint) -> reader.StateDict:
  """The model tensors of an official training checkpoint (in memory), without the DDP ``module.``
  prefix; lazy numpy arrays."""
  return reader.from_checkpoint(checkpoint)


def read_checkpoint(path: str | os.PathLike) -> reader.StateDict:
  """An official ``.pth`` (e.g. DIT's ``last.pth``), read lazily and safely (jaxris.weights.reader)."""
  return reader.read(path)


def infer_config(state_dict: dict[str, np.ndarray], scheme: str, bert: bert_weights.BertConfig | None = None,
                 **overrides) -> RisConfig:
  """Sizes from the tensor shapes: SAM variant, BERT size, extra decoder layers.

  BERT's head count is not in its shapes: 64-wide heads (every BERT-base/large) are assumed
  unless `bert` gives the config.
  """
  state_dict = reader.lazy(state_dict).stand_ins()  # shapes only: no tensor read
  sam_cfg = sam_weights.infer_config({re.sub(r"^visual_encoder\.", "image_encoder.", k): v
                                      for k, v in state_dict.items()})
  layers = {int(m.group(1)) for k in state_dict if (m := re.match(r"mask_decoder\.transformer\.layers\.(\d+)\.", k))}
  bert_layers = {int(m.group(1)) for k in state_dict if (m := re.match(r"lang_encoder\.bert\.encoder\.layer\.(\d+)\.", k))}
  word = state_dict["lang_encoder.bert.embeddings.word_embeddings.weight"]
  pos = state_dict["lang_encoder.bert.embeddings.position_embeddings.weight"]
  types = state_dict["lang_encoder.bert.embeddings.token_type_embeddings.weight"]
  inter = state_dict["lang_encoder.bert.encoder.layer.0.intermediate.dense.weight"]
  hidden = int(word.shape[1])
  bert = bert or bert_weights.BertConfig(vocab_size=int(word.shape[0]), hidden_size=hidden, num_hidden_layers=len(bert_layers),
                                 num_attention_heads=max(hidden // 64, 1), intermediate_size=int(inter.shape[0]),
                                 max_position_embeddings=int(pos.shape[0]), type_vocab_size=int(types.shape[0]),
                                 add_pooling_layer="lang_encoder.bert.pooler.dense.weight" in state_dict)
  return RisConfig(scheme=scheme, sam=sam_cfg, bert=bert,
                   extra_decoder_layers=len(layers) - sam_cfg.decoder_depth, **overrides)


def convert_state_dict(state_dict, cfg: RisConfig) -> reader.StateDict:
  """An official state_dict (unwrapped; numpy, torch or a reader.StateDict) -> float32 jaxris params,
  strict and lazy (see jaxris.weights.mapping.convert)."""
  abstract = nnx.eval_shape(lambda: RisSam(cfg, rngs=nnx.Rngs(0)))
  return convert(state_dict, RULES, store.param_shapes(abstract), ignore=IGNORE, what="DIT checkpoint")


def build(cfg: RisConfig, params, dtype=None) -> RisSam:
  # Abstract first: every weight is assigned, so a random init would only cost compile time (25-45 s).
  model = nnx.eval_shape(lambda: RisSam(cfg, rngs=nnx.Rngs(0), dtype=dtype))
  store.assign_params(model, dict(params))
  return model


def from_torch(checkpoint, scheme: str, bert=None, dtype=None, **overrides) -> RisSam:
  """A jaxris RisSam from an official checkpoint: a path, ``torch.load``'s result (a training dict
  as train.py saves it, or a state_dict) or a state_dict of numpy arrays."""
  sd = read_checkpoint(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else unwrap(checkpoint)
  cfg = infer_config(sd, scheme, bert, **overrides)
  return build(cfg, convert_state_dict(sd, cfg), dtype)


def save(directory: str, cfg: RisConfig, params, progress: bool = False) -> None:
  store.save(directory, FAMILY, cfg.to_dict(), params, progress)


def load(directory: str, dtype=None) -> RisSam:
  cfg, params = store.load(directory, FAMILY)
  return build(RisConfig.from_dict(cfg), params, dtype)
