"""EVF-SAM checkpoints (Hugging Face directories of hustvl/EVF-SAM, e.g. YxZhang/evf-sam) -> jaxris EvfSam.

A directory holds ``config.json`` (``architectures: ["EvfSamModel"]``, ``hidden_size``,
``mm_extractor_scale``, ``sam_scale``, ``out_dim``), the weights (``pytorch_model.bin``, read with
``torch.load(weights_only=True)``, or ``model.safetensors``; sharded ``*.index.json`` sets too;
fp16/bf16 become float32) and the XLM-R tokenizer files. The state_dict is three sub-models under
the official module names, so the table is made of the existing ones:

  visual_model.*          SAM (jaxris/weights/sam.py RULES under the prefix)
  mm_extractor.beit3.*    torchscale BEiT-3 (jaxris/weights/beit3.py rules under the prefix)
  text_hidden_fcs.0.{0,2} the projector's two Linears

``mm_extractor.beit3.vision_embed.mask_token`` is never read by EVF-SAM and is ignored by name;
anything else left over, missing or mis-shaped is listed at once. Sizes come from the shapes
(any SAM ViT, BEiT-3 base or large) and are cross-checked with config.json. EVF-SAM2
(``EvfSam2Model``, SAM-2 backbone) and EVF-Effi-SAM (``EvfEffiSamModel``, EfficientSAM) are
refused: their backbones are not part of jaxris.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import warnings
from typing import Mapping

import numpy as np
from flax import nnx

from jaxris.models.beit3 import POSITION_OFFSET
from jaxris.models.ris.evf import EvfConfig, EvfSam
from jaxris.weights import beit3 as beit3_weights
from jaxris.weights import sam as sam_weights
from jaxris.weights import reader, store
from jaxris.weights.mapping import ConversionError, Rule, convert, linear_kernel, prefixed

FAMILY = "evf_sam"
SAM_PREFIX = "visual_model."
BEIT3_PREFIX = "mm_extractor.beit3."

RULES = (prefixed(sam_weights.RULES, SAM_PREFIX, SAM_PREFIX) + beit3_weights.rules(BEIT3_PREFIX, BEIT3_PREFIX) + [
    Rule(r"text_hidden_fcs\.0\.([02])\.weight", r"text_hidden_fcs.0.\1.kernel", linear_kernel),
    Rule(r"text_hidden_fcs\.0\.([02])\.bias", r"text_hidden_fcs.0.\1.bias"),
])
IGNORE = (r"mm_extractor\.beit3\.vision_embed\.mask_token",)

# config.json architectures of the EVF-SAM family that jaxris does not implement.
OUT_OF_SCOPE = {
    "EvfSam2Model": "EVF-SAM2 (SAM-2 Hiera backbone)",
    "EvfEffiSamModel": "EVF-Effi-SAM (EfficientSAM backbone)",
}
_SAM2_KEYS = ("visual_model.sam_mask_decoder.", "visual_model.image_encoder.trunk.")
TOKENIZER_FILES = ("sentencepiece.bpe.model", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json")


def _refuse(what: str, where: str):
  raise ConversionError(f"{where} is an {what} checkpoint, which is out of scope: jaxris implements EVF-SAM "
                        "(EvfSamModel, SAM ViT backbone, e.g. YxZhang/evf-sam or evf-sam-multitask) only")


def check_architecture(hf_config: Mapping, state_dict: Mapping | None = None, where: str = "the checkpoint"):
  """Refuses EVF-SAM2 / EVF-Effi-SAM (by config.json, or by SAM-2's keys) and unknown architectures."""
  arch = (hf_config.get("architectures") or [None])[0]
  if arch in OUT_OF_SCOPE:
    _refuse(f"{OUT_OF_SCOPE[arch]} ('{arch}')", where)
  if state_dict is not None and any(k.startswith(_SAM2_KEYS) for k in state_dict):
    _refuse(f"{OUT_OF_SCOPE['EvfSam2Model']} (it has {'/'.join(k + '*' for k in _SAM2_KEYS)} keys)", where)
  if arch not in (None, "EvfSamModel"):
    raise ConversionError(f"{where}: architecture '{arch}' is not EVF-SAM's EvfSamModel")


def infer_config(state_dict: Mapping[str, np.ndarray], hf_config: Mapping | None = None) -> EvfConfig:
  """SAM and BEiT-3 sizes from the tensor shapes, checked against config.json's hidden_size / out_dim."""
  state_dict = reader.lazy(state_dict).stand_ins()  # shapes only: no tensor read
  sam = sam_weights.infer_config({k[len(SAM_PREFIX):]: v for k, v in state_dict.items() if k.startswith(SAM_PREFIX)})
  beit3 = beit3_weights.infer_config(state_dict, BEIT3_PREFIX)
  cfg = EvfConfig(sam=sam, beit3=beit3)
  wrong = []
  for field, value in (("hidden_size", beit3.encoder_embed_dim), ("out_dim", sam.prompt_embed_dim)):
    if hf_config and field in hf_config and int(hf_config[field]) != value:
      wrong.append(f"config.json {field}={hf_config[field]} but the weights say {value}")
  if wrong:
    raise ConversionError("config.json does not match the weights: " + "; ".join(wrong))
  return cfg


def abstract_model(cfg: EvfConfig, dtype=None) -> EvfSam:
  """An EvfSam of ShapeDtypeStructs, traced in seconds (BEiT-3's layers are traced once and copied,
  see jaxris.models.beit3.abstract_model; one trace of all 24 layers takes a minute)."""
  shallow = dataclasses.replace(cfg, beit3=dataclasses.replace(cfg.beit3, encoder_layers=0))
  model = nnx.eval_shape(lambda: EvfSam(shallow, rngs=nnx.Rngs(0), dtype=dtype))
  beit3 = beit3_weights.abstract_model(cfg.beit3, dtype)
  del beit3.vision_embed.mask_token  # as EvfSam's MmExtractor
  model.mm_extractor.beit3 = beit3
  model.cfg = cfg
  return model


def convert_state_dict(state_dict: Mapping[str, np.ndarray], cfg: EvfConfig | None = None,
                       hf_config: Mapping | None = None) -> tuple[EvfConfig, reader.StateDict]:
  """An official EvfSamModel state_dict (numpy arrays, torch tensors or a reader.StateDict) ->
  (config, float32 jaxris params); strict. The params are lazy (see jaxris.weights.mapping.convert)."""
  state_dict = reader.lazy(state_dict)
  check_architecture(hf_config or {}, state_dict)
  cfg = cfg or infer_config(state_dict, hf_config)
  shapes = store.param_shapes(abstract_model(cfg))
  return cfg, convert(state_dict, RULES, shapes, ignore=IGNORE, what="EVF-SAM checkpoint")


def read_checkpoint(src: str) -> tuple[dict, reader.StateDict]:
  """(config.json, state_dict read lazily: float32 numpy arrays) of a Hugging Face EVF-SAM directory."""
  config_path = os.path.join(src, "config.json")
  if not os.path.isfile(config_path):
    raise FileNotFoundError(f"{config_path} not found: --src must be an EVF-SAM checkpoint directory "
                            "(config.json, pytorch_model.bin or model.safetensors, sentencepiece.bpe.model)")
  with open(config_path) as f:
    hf_config = json.load(f)
  check_architecture(hf_config, where=src)  # before opening gigabytes of weights
  if not reader.weight_files(src):
    raise FileNotFoundError(f"{src} has none of {', '.join(reader.HF_WEIGHT_FILES)} (or their .index.json): "
                            "not an EVF-SAM checkpoint directory (e.g. huggingface.co/YxZhang/evf-sam)")
  return hf_config, reader.read_dir(src)


def save(directory: str, cfg: EvfConfig, params: Mapping[str, np.ndarray], progress: bool = False) -> None:
  store.save(directory, FAMILY, cfg.to_dict(), params, progress)


def convert_dir(src: str, out: str, progress: bool = False) -> tuple[EvfConfig, int]:
  """Converts an EVF-SAM checkpoint directory into DIR (weights + tokenizer); -> (config, parameter count).

  Streams: one tensor is read, converted and written at a time (jaxris.weights.store.save).
  """
  hf_config, state_dict = read_checkpoint(src)
  cfg, params = convert_state_dict(state_dict, hf_config=hf_config)
  save(out, cfg, params, progress)
  for name in TOKENIZER_FILES:
    if os.path.isfile(os.path.join(src, name)):
      shutil.copy(os.path.join(src, name), os.path.join(out, name))
  if not os.path.isfile(os.path.join(src, TOKENIZER_FILES[0])):
    warnings.warn(f"{src} has no {TOKENIZER_FILES[0]}: {out} holds the weights but load() needs the tokenizer; "
                  f"copy the checkpoint's {TOKENIZER_FILES[0]} into {out}")
  return cfg, sum(math.prod(params.shape(k)) for k in params)


def build(cfg: EvfConfig, params: Mapping[str, np.ndarray], dtype=None) -> EvfSam:
  """An EvfSam holding `params`, without spending time on a random init first."""
  model = abstract_model(cfg, dtype)
  store.assign_params(model, dict(params))
  return model


def from_torch(state_dict, dtype=None) -> EvfSam:
  """A jaxris EvfSam from an official EvfSamModel state_dict (torch tensors or numpy arrays)."""
  cfg, params = convert_state_dict(reader.from_checkpoint(state_dict))
  return build(cfg, params, dtype)


def load_tokenizer(directory: str, cfg: EvfConfig):
  """The checkpoint's XLM-R tokenizer, with its added tokens (``[semantic]`` of the multitask models).

  A directory exported by jaxris.train from the CPU-sized RefShapes recipe holds MiniLM's WordPiece
  ``vocab.txt`` instead (its small BEiT-3 learnt that vocabulary): that gives a BertTokenizer.
  """
  from jaxris.text.xlmr_tokenizer import XlmrTokenizer

  if os.path.isfile(os.path.join(directory, "vocab.txt")) and not os.path.isfile(
      os.path.join(directory, TOKENIZER_FILES[0])):
    from jaxris.text.bert_tokenizer import BertTokenizer
    return BertTokenizer.from_pretrained_dir(directory, max_length=cfg.beit3.max_source_positions - POSITION_OFFSET)
  # Official inference does not truncate; the text position table holds 1022 tokens.
  tok = XlmrTokenizer(directory, max_length=cfg.beit3.max_source_positions - POSITION_OFFSET)
  added = os.path.join(directory, "added_tokens.json")
  if os.path.isfile(added):
    with open(added) as f:
      wanted = sorted(json.load(f).items(), key=lambda kv: kv[1])
    # XlmrTokenizer reads the .model file only; transformers' from_pretrained would also read
    # added_tokens.json, which appends the tokens at these ids.
    got = tok.add_tokens([t for t, _ in wanted])
    wrong = [f"{t}: {got[t]} != {i}" for t, i in wanted if got[t] != i]
    if wrong:
      raise ValueError(f"{added}: added tokens do not get their recorded ids ({', '.join(wrong)})")
  if tok.vocab_size > cfg.beit3.vocab_size:
    raise ValueError(f"the tokenizer in {directory} emits {tok.vocab_size} ids but BEiT-3's text table has "
                     f"{cfg.beit3.vocab_size} rows: the tokenizer does not belong to these weights")
  return tok


def load(directory: str, dtype=None):
  """A converted directory (python convert/evf_sam.py ...) -> (EvfSam, XlmrTokenizer). No PyTorch needed."""
  cfg, params = store.load(directory, FAMILY)
  cfg = EvfConfig.from_dict(cfg)
  return build(cfg, params, dtype), load_tokenizer(directory, cfg)
