"""Sections shared by the recipes in this folder (configs are code, as in big_vision).

A recipe is ``configs/<name>.py`` with ``get_config(arg=None)``; ``arg`` is the text after the
colon in ``--config configs/ldit_vitb.py:refshapes,freeze=visual_encoder`` -- comma-separated
``key=value`` pairs, a bare ``key`` meaning True. Any field can also be overridden on the command
line: ``--config.batch_size=8``. Every field the code reads is declared by every recipe; the
helpers here return whole sections so that a recipe reads top to bottom.
"""

from __future__ import annotations

import ml_collections as mlc


def parse_arg(arg: str | None, **defaults) -> mlc.ConfigDict:
  """'refshapes,steps=100' -> ConfigDict(refshapes=True, steps=100) over `defaults`."""
  out = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, eq, value = item.partition("=")
    key = key.strip()
    if key not in out:
      raise ValueError(f"unknown config argument {key!r}; known: {sorted(out)}")
    if not eq:
      out[key] = True
      continue
    kind = type(out[key])
    out[key] = (value.lower() in ("1", "true", "yes")) if kind is bool else kind(value) if out[key] is not None else value
  return mlc.ConfigDict(out)


def refcoco_data(dataset: str, preprocess: str, image_size: int, evf_size: int = 0) -> mlc.ConfigDict:
  """The ``data`` section for the official RefCOCO files (RefCOCOg has no testA/testB)."""
  return mlc.ConfigDict(dict(
      name="refcoco", root="data/refcoco", dataset=dataset,  # python -m jaxris.data.refcoco --root ... --check
      train_split="train", eval_splits=("val",) if "refcocog" in dataset else ("val", "testA", "testB"),
      preprocess=preprocess,        # the official transforms: "dit" | "evf" | "sam" (jaxris/data/transforms.py)
      image_size=image_size,        # model input side
      evf_size=evf_size,            # BEiT-3's square view (EVF-SAM: 224); 0 = none
      train_sentences="random",     # one random sentence per referred object and epoch (official)
      refshapes={},                 # unused here (RefShapes sizes)
  ))


def refshapes_data() -> mlc.ConfigDict:
  """The ``data`` section of every CPU-sized recipe: the built-in RefShapes at 128 px (6000 train scenes)."""
  return mlc.ConfigDict(dict(
      name="refshapes", root="", dataset="refshapes", train_split="train", eval_splits=("val", "testA", "testB"),
      preprocess="dit", image_size=128, evf_size=0, train_sentences="random",
      refshapes=dict(image_size=128, num_train=6000, num_val=300, num_testA=300, num_testB=300),
  ))


# The trained SAM decoder every CPU-sized recipe starts from: the official MobileSAM checkpoint, whose
# prompt encoder and mask decoder are SAM's (jaxris.build fetches and converts it once into the cache).
REAL_SAM_DECODER = "mobile_sam"


def cpu_sam(model: mlc.ConfigDict) -> None:
  """The CPU-sized SAM of the RefShapes recipes: a 4-block, 128-wide ViT with 8 px patches on 128 px
  (a 16x16 grid) and its neck, random init since no SAM image encoder is this small, then SAM's own
  prompt encoder and mask decoder (256 wide, MLP 2048): `init.sam_decoder` starts them from a real,
  trained SAM decoder, as the papers always do."""
  model.sam_variant = "vit_b"
  model.sam_overrides = dict(img_size=128, patch_size=8, embed_dim=128, depth=4, num_heads=4,
                             global_attn_indexes=(1, 3), window_size=8)
  model.prompt_embed_dim = 256
  model.decoder_mlp_dim = 2048


def dit_model(scheme: str, sam_variant: str, extra_decoder_layers: int = 0) -> mlc.ConfigDict:
  """The ``model`` section of a DIT-SAM row (the official settings)."""
  return mlc.ConfigDict(dict(
      family="dit",
      scheme=scheme,                # default | edit | ldit | token_ldit | token_edit | crossatt | crossatt_ffn
      sam_variant=sam_variant,
      sam_overrides={},             # image-encoder fields to override (reduced sizes)
      prompt_embed_dim=256, decoder_mlp_dim=2048,
      extra_decoder_layers=extra_decoder_layers,  # Table 1 "Add N decoder layers"
      max_tokens=20,                # BERT tokens per phrase, [CLS]/[SEP] included (official 20)
      bert_layer=1,                 # official DIT: BERT's hidden state after its first layer
      bert_dropout=0.1,             # BERT's dropout while training (official: bert-base's config, 0.1)
      slot_dropout=0.1,             # dropout on the injected text slots (official 0.1)
      pos_embed_init="zeros",       # the ViT's position embedding before any checkpoint: "zeros" (SAM) | "sincos"
      dtype="float32",              # compute dtype; parameters stay float32 ("bfloat16" for speed)
      remat=False,                  # rematerialise ViT blocks in the backward pass (GPU/TPU memory)
  ))


def dit_init(sam_variant: str) -> mlc.ConfigDict:
  """Pretrained parts of a DIT-SAM row: converted SAM and bert-base-uncased."""
  return mlc.ConfigDict(dict(
      sam=f"weights/sam_{sam_variant}",    # python -m jaxris.convert.sam --src sam_<variant>_*.pth --out ...
      bert="weights/bert-base-uncased",    # python -m jaxris.convert.bert --src <HF bert-base-uncased dir> --out ...
      sam_decoder="",                      # a converted SAM whose prompt encoder + mask decoder replace sam's
  ))


def dit_optimizer() -> mlc.ConfigDict:
  """The official DIT optimiser: Adam (0.9, 0.98, eps 1e-9), clip 0.15, warm-up + cosine ('wcosine')."""
  return mlc.ConfigDict(dict(
      lr=1e-4, b1=0.9, b2=0.98, eps=1e-9, weight_decay=0.0, grad_clip=0.15,
      lr_scale=(),                  # ((module prefix, multiplier), ...): per-module learning rates
      schedule="wcosine",           # official code; "step": the paper's x0.2 at epochs 30 and 35
      warmup_steps=0, warmup_epochs=3.0, warmup_lr=1e-7, min_lr=1e-6,
      milestones=(30, 35), gamma=0.2,  # used by schedule="step" only
  ))


def run_settings(c: mlc.ConfigDict) -> None:
  """Mesh, logging, checkpointing and evaluation cadence of a full-size run."""
  c.mesh = (-1, 1, 1)               # (data, fsdp, tensor); -1 takes the remaining devices
  c.skip_nonfinite = 0              # updates with a non-finite loss/gradient dropped (and counted) before stopping
  c.sharding_rules = (              # parameters' logical axes -> mesh axes (jaxris/sharding.py)
      ("embed", "fsdp"), ("mlp", "tensor"), ("qkv", "tensor"), ("heads", "tensor"), ("kv", None),
      ("vocab", "tensor"), ("conv_in", "fsdp"), ("conv_out", "tensor"), ("norm", None))
  c.log_every = 50
  c.checkpoint_every = 1000
  c.keep_checkpoints = 2
  c.eval_every = 0                  # steps; 0: at the end of every epoch
  c.eval_examples = 0               # > 0: evaluate periodically on this many examples only
  c.predict_examples = 4            # overlays written after training


def refshapes_run_settings(c: mlc.ConfigDict) -> None:
  """Logging and evaluation cadence of the CPU-sized RefShapes runs (minutes, not days)."""
  c.log_every = 20
  c.checkpoint_every = 250
  c.eval_every = 350
  c.eval_examples = 300


def dit_on_refshapes(c: mlc.ConfigDict, freeze: str = "", steps: int = 0) -> None:
  """A DIT-SAM recipe's CPU-sized variant on the built-in RefShapes data, trained in minutes: the small
  SAM of `cpu_sam` (random image encoder, MobileSAM's trained decoder) and the real all-MiniLM-L6-v2,
  frozen, as text encoder."""
  cpu_sam(c.model)
  # DIT runs every block globally, so a block's relative-position tables only differ in size: SAM's
  # windowed blocks hold 2*8-1 entries that DIT stretches linearly to the 2*16-1 of the grid. A
  # random encoder has no checkpoint to match, so every block gets the grid's full table (README
  # command 1, val mIoU: 49.28 -> 56.74, positions 41 -> 51, relations 51 -> 65).
  c.model.sam_overrides["global_attn_indexes"] = tuple(range(c.model.sam_overrides["depth"]))
  c.model.bert_layer = -1       # MiniLM's last layer carries its sentence semantics
  c.model.bert_dropout = 0.0    # the text encoder is frozen: dropout there would only add noise
  c.init.sam = ""
  c.init.sam_decoder = REAL_SAM_DECODER
  c.init.bert = "minilm"
  c.data = refshapes_data()
  c.batch_size = 16
  c.epochs = 0
  c.steps = steps or 1000       # ~2.7 epochs of 6000 scenes: what fits README command 1's 15 minutes
  # Swept on README command 1 (700 steps, val mIoU): 1e-3 41.5, 5e-4 47.7, 3e-4 47.7 (README "RefShapes").
  c.optimizer.lr = 5e-4
  c.optimizer.warmup_epochs = 0.3
  c.optimizer.grad_clip = 1.0
  c.optimizer.min_lr = 1e-5
  c.ema_decay = 0.0
  c.freeze = tuple(filter(None, freeze.split("+"))) or ("lang_encoder",)
  c.loss = "bce+dice"
  refshapes_run_settings(c)
