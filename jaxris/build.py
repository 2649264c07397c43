"""A recipe's ``model`` and ``init`` sections -> (model, typed model config, tokenizer).

This is the one place where a recipe becomes a model. ``model.family`` picks it: "dit" (DIT-SAM's
RisSam, every Table 1/2/4 row), "evf" (EVF-SAM) or "bridge" (the SAM+CLIP bridge, BridgeSam).
``init`` names the converted pretrained parts;
``check_init_paths`` fails within seconds, naming a missing path and the command that makes it.

DIT ``init`` keys: sam (converted SAM, its image encoder becomes ``visual_encoder``), bert (a
converted BERT directory, or "minilm": the bundled all-MiniLM-L6-v2).
EVF ``init`` keys: evf (a converted EVF-SAM directory: every parameter and the tokenizer, to
fine-tune a release), sam, beit3 (converted BEiT-3), tokenizer (BEiT-3's sentencepiece model, or
"minilm": MiniLM's WordPiece vocabulary for the CPU-sized recipe whose small BEiT-3 learns its text
table from scratch). The EVF projector always starts random, as in the official training.
Bridge ``init`` keys: sam (converted SAM: its image encoder, prompt encoder and mask decoder), clip
(converted CLIP: its vision tower, frozen), bert (as DIT), constants (a directory written by
``python -m jaxris.weights.bridge``: the CLIP-text tables; "" = fixed random tables, the CPU recipes).
All: sam_decoder (a converted SAM whose prompt encoder and mask decoder, and only those, are loaded:
the CPU-sized recipes' image encoder is too small for any checkpoint, their decoder is SAM's), or
"mobile_sam": the official MobileSAM checkpoint, fetched and converted once into the jaxris cache.

Every model class names the batch fields its ``__call__`` takes, in order, as ``BATCH_INPUTS``.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile

import numpy as np
from flax import nnx

from jaxris.models.beit3 import BEiT3Config
from jaxris.models.functional import assign_params, flat_params
from jaxris.models.clip import CLIPVisionConfig
from jaxris.models.ris.bridge.model import CLIP_L14_336, BridgeConfig, BridgeSam
from jaxris.models.ris.dit_sam import RisConfig, RisSam
from jaxris.models.ris.evf import EvfConfig, EvfSam
from jaxris.models.sam.sam import sam_config
from jaxris.text.bert_tokenizer import BertTokenizer
from jaxris.text.xlmr_tokenizer import XlmrTokenizer
from jaxris.weights import beit3 as beit3_weights
from jaxris.weights import bridge as bridge_weights
from jaxris.weights import bert as bert_weights
from jaxris.weights import clip as clip_weights
from jaxris.weights import dit as dit_weights
from jaxris.weights import evf_sam as evf_weights
from jaxris.weights import fetch
from jaxris.weights import sam as sam_weights
from jaxris.weights import store

DTYPES = {"float32": None, "bfloat16": "bfloat16"}
# recipe family -> exported weights family
FAMILIES = {"dit": dit_weights.FAMILY, "evf": evf_weights.FAMILY, "bridge": bridge_weights.FAMILY}


def family(model_cfg) -> str:
  """'dit', 'evf' or 'bridge': which model a recipe's ``model`` section builds."""
  if model_cfg.family not in FAMILIES:
    raise ValueError(f"unknown model family {model_cfg.family!r}: one of {sorted(FAMILIES)}")
  return model_cfg.family


def weights_family(model_cfg) -> str:
  """The FAMILY tag of the exported weights directory (read back by the matching weights module)."""
  return FAMILIES[family(model_cfg)]


def text_encoder_dir(spec: str) -> str:
  """'minilm' -> the bundled all-MiniLM-L6-v2; anything else is a directory path."""
  return str(bert_weights.minilm_dir()) if spec == "minilm" else spec


def sam_decoder_dir(spec: str, cache: str | None = None) -> str:
  """A fetchable checkpoint's name (fetch.SOURCES: "mobile_sam") -> its converted directory in the
  jaxris cache, fetched and converted on first use; anything else is a directory path."""
  if spec not in fetch.SOURCES:
    return spec
  cache = cache or fetch.default_cache()
  out = os.path.join(cache, "converted", spec)
  if not os.path.exists(os.path.join(out, store.CONFIG_FILE)):
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with tempfile.TemporaryDirectory(dir=os.path.dirname(out), prefix=f".{spec}-") as tmp:
      fetch.fetch(spec, os.path.join(tmp, spec), cache)
      try:  # a complete directory or none: concurrent first uses (test workers) each convert, one wins
        os.rename(os.path.join(tmp, spec), out)
      except OSError:
        if not os.path.exists(os.path.join(out, store.CONFIG_FILE)):
          raise
  return out


# --- Start-up checks.

_HOW_TO_GET = {  # (family, init key) -> (what it is, how to get it)
    ("dit", "sam"): ("SAM weights", "download the official checkpoint (e.g. sam_vit_b_01ec64.pth from "
                     "facebookresearch/segment-anything) and run python -m jaxris.convert.sam --src "
                     "sam_vit_b_01ec64.pth --out {path}"),
    ("dit", "bert"): ("BERT weights", "get a Hugging Face bert-base-uncased directory (config.json, "
                      "model.safetensors, vocab.txt) and run python -m jaxris.convert.bert --src <that dir> "
                      "--out {path} (or set --config.init.bert=minilm for the bundled all-MiniLM-L6-v2)"),
    ("evf", "evf"): ("converted EVF-SAM weights", "download a released checkpoint (e.g. YxZhang/evf-sam on "
                     "Hugging Face) and run python -m jaxris.convert.evf_sam --src <that dir> --out {path}"),
    ("evf", "sam"): ("SAM weights", "download sam_vit_h_4b8939.pth (facebookresearch/segment-anything) and run "
                     "python -m jaxris.convert.sam --src sam_vit_h_4b8939.pth --out {path}"),
    ("evf", "beit3"): ("converted BEiT-3 weights", "download beit3_large_patch16_224.pth (microsoft/unilm "
                       "beit3) and run python -m jaxris.convert.beit3 --src beit3_large_patch16_224.pth "
                       "--out {path}"),
    ("evf", "tokenizer"): ("BEiT-3's sentencepiece model", "download beit3.spm (microsoft/unilm beit3 README; "
                           "the same file is sentencepiece.bpe.model in the EVF-SAM checkpoints) to {path}"),
}
_SAM_DECODER = ("SAM prompt encoder and mask decoder weights", "run python -m jaxris.weights.fetch mobile_sam --out "
                "{path} (the official MobileSAM, whose decoder is SAM's; or convert any SAM checkpoint with "
                "python -m jaxris.convert.sam), or set --config.init.sam_decoder= to start them from random")
_HOW_TO_GET.update({
    ("bridge", "sam"): ("SAM weights", "download sam_vit_b_01ec64.pth (facebookresearch/segment-anything) and run "
                        "python -m jaxris.convert.sam --src sam_vit_b_01ec64.pth --out {path}"),
    ("bridge", "clip"): ("converted CLIP weights", "download OpenAI's ViT-L-14-336px.pt (or the Hugging Face "
                         "openai/clip-vit-large-patch14-336 directory) and run python -m jaxris.convert.clip --src "
                         "<that file or dir> --out {path}"),
    ("bridge", "bert"): _HOW_TO_GET[("dit", "bert")],
    ("bridge", "constants"): ("the bridge's CLIP-text constants", "run python -m jaxris.weights.bridge --clip "
                              "<converted CLIP-L/14-336> --out {path} (or set --config.init.constants= for fixed "
                              "random tables)"),
})
_HOW_TO_GET.update({(f, "sam_decoder"): _SAM_DECODER for f in FAMILIES})


def check_init_paths(model_cfg, init_cfg) -> None:
  """Fails within seconds, naming the missing weights and the command that provides them."""
  fam = family(model_cfg)
  keys = [k for f, k in _HOW_TO_GET if f == fam]
  if fam == "evf" and init_cfg.evf:
    keys = ["evf"]  # a converted EVF-SAM directory holds every part
  for key in keys:
    path = init_cfg[key]
    if key == "bert":
      path = text_encoder_dir(path)
    if key == "sam_decoder" and path in fetch.SOURCES:
      try:
        path = sam_decoder_dir(path)  # seconds: a download of ~40 MB the first time, then the cache
      except fetch.FetchError as e:
        raise FileNotFoundError(f"could not fetch {path!r} for init.sam_decoder: {e}\n"
                                f"{_SAM_DECODER[1].format(path='weights/' + path)}") from None
    if not path or path == "minilm":
      continue
    marker = {"sam": store.CONFIG_FILE, "sam_decoder": store.CONFIG_FILE, "beit3": store.CONFIG_FILE,
              "evf": store.CONFIG_FILE, "constants": bridge_weights.CONSTANTS_FILE}.get(key)
    marker = os.path.join(path, marker) if marker else path
    if not os.path.exists(marker):
      what, how = _HOW_TO_GET[(fam, key)]
      raise FileNotFoundError(f"{what} not found at {path}: {how.format(path=path)}")


# --- Typed model configs: built here and nowhere else.

def sam_for(model_cfg):
  """The recipe's SamConfig; the neck's width is the prompt width (SAM's 256, or a reduced recipe's)."""
  sam = sam_config(model_cfg.sam_variant, **{"out_chans": model_cfg.prompt_embed_dim, **dict(model_cfg.sam_overrides)})
  return dataclasses.replace(sam, prompt_embed_dim=model_cfg.prompt_embed_dim, decoder_mlp_dim=model_cfg.decoder_mlp_dim)


def dit_config(model_cfg, bert_cfg) -> RisConfig:
  # BERT's dropout rates are the recipe's (the official DIT trains BERT with its config's 0.1).
  bert_cfg = dataclasses.replace(bert_cfg, hidden_dropout_prob=model_cfg.bert_dropout,
                                 attention_probs_dropout_prob=model_cfg.bert_dropout)
  return RisConfig(scheme=model_cfg.scheme, sam=sam_for(model_cfg), bert=bert_cfg,
                   extra_decoder_layers=model_cfg.extra_decoder_layers, bert_layer=model_cfg.bert_layer,
                   slot_dropout=model_cfg.slot_dropout, remat=model_cfg.remat)


def evf_config(model_cfg, vocab_size: int | None = None) -> EvfConfig:
  sizes = getattr(BEiT3Config, model_cfg.beit3)  # base | large
  overrides = dict(model_cfg.beit3_overrides)
  if vocab_size and "vocab_size" not in overrides:
    overrides["vocab_size"] = vocab_size
  return EvfConfig(sam=sam_for(model_cfg), beit3=sizes(**overrides), fusion=model_cfg.fusion,
                   pooling=model_cfg.pooling, multimask=model_cfg.multimask)


def bridge_config(model_cfg, bert_cfg, clip_cfg: CLIPVisionConfig | None = None, constants: dict | None = None
                  ) -> BridgeConfig:
  """The bridge's sizes: SAM and CLIP from the recipe (CLIP from its checkpoint when one is given), BERT's
  from its checkpoint without the pooler, the table sizes from the constants when given."""
  bert_cfg = dataclasses.replace(bert_cfg, add_pooling_layer=False, hidden_dropout_prob=model_cfg.bert_dropout,
                                 attention_probs_dropout_prob=model_cfg.bert_dropout)
  clip_cfg = clip_cfg or dataclasses.replace(CLIP_L14_336, **dict(model_cfg.clip_overrides))
  sizes = dict(model_cfg.bridge_sizes)
  if constants:
    sizes.update(num_classes=constants["class_text"].shape[0], clip_text_dim=constants["class_text"].shape[1],
                 num_category_ids=constants["category_rows"].shape[0])
  return BridgeConfig(sam=sam_for(model_cfg), clip=clip_cfg, bert=bert_cfg, sparse_query=model_cfg.sparse_query,
                      no_target_head=model_cfg.no_target_head, **sizes)


# --- Building.

def build(model_cfg, init_cfg, seed: int = 0):
  """-> (model, its typed config, tokenizer). Weights: the pretrained parts named by `init_cfg`, rest random."""
  check_init_paths(model_cfg, init_cfg)
  return _BUILDERS[family(model_cfg)](model_cfg, init_cfg, seed)


def _build_dit(model_cfg, init_cfg, seed):
  bert_model, tokenizer = bert_weights.load(text_encoder_dir(init_cfg.bert))
  tokenizer.max_length = model_cfg.max_tokens
  cfg = dit_config(model_cfg, bert_model.config)
  model = RisSam(cfg, rngs=nnx.Rngs(seed), dtype=DTYPES[model_cfg.dtype])
  updates = {f"lang_encoder.{k}": v for k, v in flat_params(bert_model).items()}
  updates.update(position_init(model_cfg, init_cfg, "visual_encoder.pos_embed", cfg.sam.encoder))
  if init_cfg.sam:
    _, sam_params = store.load(init_cfg.sam, sam_weights.FAMILY)
    updates.update({k.replace("image_encoder.", "visual_encoder.", 1): v for k, v in sam_params.items()})
  updates.update(sam_decoder_params(init_cfg.sam_decoder))
  load_pretrained(model, updates)
  return model, cfg, tokenizer


def _build_evf(model_cfg, init_cfg, seed):
  dtype = DTYPES[model_cfg.dtype]
  if init_cfg.evf:
    model, tokenizer = evf_weights.load(init_cfg.evf, dtype)
    fixed_length(tokenizer, model_cfg.max_tokens)
    return model, model.cfg, tokenizer
  if init_cfg.tokenizer == "minilm":
    tokenizer = BertTokenizer.from_pretrained_dir(bert_weights.minilm_dir(), max_length=model_cfg.max_tokens)
  else:
    tokenizer = XlmrTokenizer(init_cfg.tokenizer, max_length=model_cfg.max_tokens, pad_to_max_length=True)
  cfg = evf_config(model_cfg, vocab_size=tokenizer.vocab_size if init_cfg.tokenizer == "minilm" else None)
  model = EvfSam(cfg, rngs=nnx.Rngs(seed), dtype=dtype)
  updates = position_init(model_cfg, init_cfg, "visual_model.image_encoder.pos_embed", cfg.sam.encoder)
  if init_cfg.sam:
    _, sam_params = store.load(init_cfg.sam, sam_weights.FAMILY)
    updates.update({f"visual_model.{k}": v for k, v in sam_params.items()})
  updates.update({f"visual_model.{k}": v for k, v in sam_decoder_params(init_cfg.sam_decoder).items()})
  if init_cfg.beit3:
    _, beit3_params = store.load(init_cfg.beit3, beit3_weights.FAMILY)
    updates.update({f"mm_extractor.beit3.{k}": v for k, v in beit3_params.items()
                    if not k.startswith("vision_embed.mask_token")})
  if updates:
    load_pretrained(model, updates)
  return model, cfg, tokenizer


def _build_bridge(model_cfg, init_cfg, seed):
  bert_model, tokenizer = bert_weights.load(text_encoder_dir(init_cfg.bert))
  fixed_length(tokenizer, model_cfg.max_tokens)
  updates = {f"bert.{k}": v for k, v in flat_params(bert_model).items() if not k.startswith("pooler.")}
  clip_cfg = None
  if init_cfg.clip:
    clip_model = clip_weights.load_vision_model(init_cfg.clip)
    clip_cfg = clip_model.config
    updates.update({f"clip.{k}": v for k, v in flat_params(clip_model).items()})
  constants = bridge_weights.load_constants(init_cfg.constants) if init_cfg.constants else None
  cfg = bridge_config(model_cfg, bert_model.config, clip_cfg, constants)
  model = BridgeSam(cfg, rngs=nnx.Rngs(seed), dtype=DTYPES[model_cfg.dtype])
  updates.update(position_init(model_cfg, init_cfg, "sam_encoder.pos_embed", cfg.sam.encoder))
  if init_cfg.sam:
    _, sam_params = store.load(init_cfg.sam, sam_weights.FAMILY)
    updates.update({k.replace("image_encoder.", "sam_encoder.", 1): v for k, v in sam_params.items()})
  updates.update(sam_decoder_params(init_cfg.sam_decoder))
  if constants:
    updates.update(constants)
  load_pretrained(model, updates)
  return model, cfg, tokenizer


_BUILDERS = {"dit": _build_dit, "evf": _build_evf, "bridge": _build_bridge}


def position_init(model_cfg, init_cfg, name: str, encoder) -> dict:
  """The SAM ViT's absolute position embedding at start, by ``model.pos_embed_init``: "zeros" (SAM's
  own initialisation, which a checkpoint then overwrites) or "sincos" (the fixed 2-D sine-cosine table
  of MAE / ViTDet pre-training, for an image encoder trained from scratch: every patch knows where it
  is from the first step, which expressions such as "the second square from the left" need)."""
  how = model_cfg.pos_embed_init
  if how not in ("zeros", "sincos"):
    raise ValueError(f"model.pos_embed_init must be 'zeros' or 'sincos', got {how!r}")
  if how == "zeros":
    return {}
  if init_cfg.sam:
    raise ValueError("model.pos_embed_init='sincos' is for an image encoder trained from scratch; init.sam "
                     f"({init_cfg.sam}) brings SAM's trained position embedding")
  return {name: sincos_2d(encoder.grid, encoder.grid, encoder.embed_dim)[None]}


def sincos_2d(h: int, w: int, dim: int, temperature: float = 10000.0) -> np.ndarray:
  """float32 [h, w, dim]: sin and cos of the column index (first half) and of the row index (second
  half) at dim/4 frequencies each, in the order of MAE's get_2d_sincos_pos_embed."""
  if dim % 4:
    raise ValueError(f"sincos_2d needs a width divisible by 4, got {dim}")
  omega = 1.0 / temperature ** (np.arange(dim // 4, dtype=np.float64) / (dim // 4))
  def encode(pos):
    angles = np.outer(pos, omega)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)
  rows, cols = encode(np.arange(h)), encode(np.arange(w))
  table = np.concatenate([np.repeat(cols[None], h, axis=0), np.repeat(rows[:, None], w, axis=1)], axis=-1)
  return table.astype(np.float32)


def sam_decoder_params(spec: str) -> dict:
  """The prompt encoder's and mask decoder's weights of the converted SAM `spec` names ({} for "")."""
  if not spec:
    return {}
  _, params = store.load(sam_decoder_dir(spec), sam_weights.FAMILY)
  return {k: v for k, v in params.items() if k.startswith(("prompt_encoder.", "mask_decoder."))}


def fixed_length(tokenizer, max_tokens: int):
  """Training and evaluation batches need one text length: every text padded (or cut) to `max_tokens`."""
  tokenizer.max_length, tokenizer.pad_to_max_length = max_tokens, True
  return tokenizer


def load_pretrained(model, updates: dict) -> None:
  """Overwrites `model`'s parameters named in `updates`; any name or shape that does not fit is an error."""
  params = flat_params(model)
  wrong = [f"{k}: {tuple(v.shape)} vs the model's {tuple(params[k].shape)}" if k in params else f"{k}: not in the model"
           for k, v in updates.items() if k not in params or tuple(v.shape) != tuple(params[k].shape)]
  if wrong:
    raise ValueError("pretrained weights do not fit the recipe's model:\n  " + "\n  ".join(wrong))
  params.update(updates)
  assign_params(model, params)
