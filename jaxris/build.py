"""Text-prompting schemes for SAM (one file each) and how a recipe's ``model`` config builds one.

``build(model_cfg, init_cfg, seed)`` returns the model, its config and the tokenizer, with the
pretrained parts loaded from converted directories when the recipe names them. ``model_cfg.family``
picks the model: "dit" (DIT-SAM's RisSam: default.py, dit.py) or "evf" (EVF-SAM: evf.py). Missing
weights fail at once with the path and the command that makes them.

Every model class names the batch fields its ``__call__`` takes, in order, as ``BATCH_INPUTS``;
the train and eval steps call ``model(*(batch[k] for k in model.BATCH_INPUTS))``.
"""

from __future__ import annotations

import dataclasses
import os

from flax import nnx

from jaxris.models.ris.dit_sam import RisConfig, RisSam
from jaxris.models.sam.sam import sam_config
from jaxris.weights import store

DTYPES = {"float32": None, "bfloat16": "bfloat16"}


def text_encoder_dir(spec: str) -> str:
  """'minilm' -> the bundled all-MiniLM-L6-v2; anything else is a directory path."""
  if spec == "minilm":
    from jaxris.weights.bert import minilm_dir
    return str(minilm_dir())
  return spec


def family(model_cfg) -> str:
  """'dit' or 'evf': which model a recipe's ``model`` config builds."""
  name = model_cfg.get("family", "dit")
  if name not in ("dit", "evf"):
    raise ValueError(f"unknown model family {name!r}: 'dit' or 'evf'")
  return name


def weights_family(model_cfg) -> str:
  """The FAMILY tag of the exported weights directory (read back by the matching weights module)."""
  if family(model_cfg) == "evf":
    from jaxris.weights.evf_sam import FAMILY
    return FAMILY
  from jaxris.weights.dit import FAMILY
  return FAMILY


def check_init_paths(init_cfg) -> None:
  """Fails within seconds, naming the missing weights and the command that provides them."""
  for key, what, command in _EVF_INIT:
    path = init_cfg.get(key, "")
    if path and path != "minilm" and not os.path.exists(path):
      raise FileNotFoundError(f"{what} not found at {path}: {command.format(path=path)}")
  if init_cfg.get("evf"):
    return  # a converted EVF-SAM directory holds every part
  if init_cfg.sam and not os.path.isfile(os.path.join(init_cfg.sam, store.CONFIG_FILE)):
    raise FileNotFoundError(
        f"SAM weights not found at {init_cfg.sam}: download the official checkpoint "
        f"(e.g. sam_vit_b_01ec64.pth from facebookresearch/segment-anything) and run "
        f"python convert/sam.py --src sam_vit_b_01ec64.pth --out {init_cfg.sam}")
  bert = text_encoder_dir(init_cfg.bert) if init_cfg.get("bert") else ""
  if bert and not os.path.isdir(bert):
    raise FileNotFoundError(
        f"BERT weights not found at {bert}: get a Hugging Face bert-base-uncased directory (config.json, "
        f"model.safetensors, vocab.txt) and run python convert/bert.py --src <that dir> --out {bert} "
        f"(or set --config.init.bert=minilm for the bundled all-MiniLM-L6-v2)")


_EVF_INIT = (  # (init key, what it is, how to get it) for the EVF-SAM recipes
    ("evf", "converted EVF-SAM weights",
     "download a released checkpoint (e.g. YxZhang/evf-sam on Hugging Face) and run "
     "python convert/evf_sam.py --src <that dir> --out {path}"),
    ("beit3", "converted BEiT-3 weights",
     "download beit3_large_patch16_224.pth (microsoft/unilm beit3) and run "
     "python convert/beit3.py --src beit3_large_patch16_224.pth --out {path}"),
    ("tokenizer", "BEiT-3's sentencepiece model",
     "download beit3.spm (microsoft/unilm beit3 README; the same file is sentencepiece.bpe.model "
     "in the EVF-SAM checkpoints) to {path}"),
)


def build(model_cfg, init_cfg, seed: int = 0):
  """-> (model, its config, tokenizer). Weights: the pretrained parts named by `init_cfg`, rest random."""
  check_init_paths(init_cfg)
  if family(model_cfg) == "evf":
    from jaxris.build_evf import build_evf
    return build_evf(model_cfg, init_cfg, seed)
  from jaxris.weights import bert as bert_weights

  bert_model, tokenizer = bert_weights.load(text_encoder_dir(init_cfg.bert))
  sam = sam_for(model_cfg)
  cfg = RisConfig(scheme=model_cfg.scheme, sam=sam, bert=bert_model.config,
                  extra_decoder_layers=model_cfg.extra_decoder_layers, bert_layer=model_cfg.bert_layer,
                  slot_dropout=model_cfg.slot_dropout, remat=model_cfg.remat)
  model = RisSam(cfg, rngs=nnx.Rngs(seed), dtype=DTYPES[model_cfg.dtype])
  updates = {f"lang_encoder.{k}": v for k, v in store.flat_params(bert_model).items()}
  if init_cfg.sam:
    from jaxris.weights import sam as sam_weights
    sam_cfg, sam_params = store.load(init_cfg.sam, sam_weights.FAMILY)
    renamed = {k.replace("image_encoder.", "visual_encoder.", 1): v for k, v in sam_params.items()}
    updates.update(renamed)
  load_pretrained(model, updates)
  return model, cfg, tokenizer


def sam_for(model_cfg):
  """The recipe's SamConfig; the neck's width is the prompt width (SAM's 256, or a reduced recipe's)."""
  sam = sam_config(model_cfg.sam_variant, **{"out_chans": model_cfg.prompt_embed_dim, **dict(model_cfg.sam_overrides)})
  return dataclasses.replace(sam, prompt_embed_dim=model_cfg.prompt_embed_dim, decoder_mlp_dim=model_cfg.decoder_mlp_dim)


def load_pretrained(model, updates: dict) -> None:
  """Overwrites `model`'s parameters named in `updates`; any name or shape that does not fit is an error."""
  params = store.flat_params(model)
  wrong = [f"{k}: {tuple(v.shape)} vs the model's {tuple(params[k].shape)}" if k in params else f"{k}: not in the model"
           for k, v in updates.items() if k not in params or tuple(v.shape) != tuple(params[k].shape)]
  if wrong:
    raise ValueError("pretrained weights do not fit the recipe's model:\n  " + "\n  ".join(wrong))
  params.update(updates)
  store.assign_params(model, params)
