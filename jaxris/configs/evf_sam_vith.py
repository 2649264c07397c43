"""EVF-SAM: BEiT-3-Large early fusion prompting SAM ViT-H (the released EVF-SAM), with a training recipe.

  python -m jaxris.train --config configs/evf_sam_vith.py --workdir runs/evf_sam_vith               # RefCOCO
  python -m jaxris.train --config configs/evf_sam_vith.py:refshapes --workdir runs/evf_rs           # CPU-sized, built-in data
  python -m jaxris.train --config configs/evf_sam_vith.py --config.init.evf=weights/evf_sam ...     # fine-tune released weights

The official repository (hustvl/EVF-SAM) ships inference only. This recipe follows the paper and
the LISA code base it names: AdamW 1e-4 with linear decay, BCE + Dice, global batch 128 (16
micro-batches of 8, gradient accumulation), 15k iterations, SAM's image encoder frozen (BEiT-3,
the projector, the prompt encoder and the mask decoder train).

Arguments after the colon (comma-separated): refshapes, steps=N, dataset=refcoco|refcoco+|refcocog_umd,
fusion=early|text|late (Table 3), pooling=vision_cls|text_cls|mean (Table 5),
freeze=visual_model.image_encoder+visual_model.mask_decoder... (Table 4: which parts train).
Deliberate difference: the loss is taken on the 1024x1024 padded frame (the mask resized like the
image), where the official forward takes it at the original image size.
"""

import ml_collections as mlc

from jaxris.configs import common


def get_config(arg=None):
  a = common.parse_arg(arg, refshapes=False, freeze="visual_model.image_encoder", dataset="refcoco", steps=0,
                       fusion="early", pooling="vision_cls")
  c = mlc.ConfigDict()
  c.name = "evf_sam_vith"
  c.seed = 0

  # Model: BEiT-3-Large fuses the 224 px image and the phrase; its vision [CLS] -> MLP -> one sparse
  # prompt token of SAM ViT-H (dense prompt = no_mask_embed, single mask).
  c.model = mlc.ConfigDict(dict(
      family="evf",
      sam_variant="vit_h", sam_overrides={}, prompt_embed_dim=256, decoder_mlp_dim=2048,
      beit3="large",                # base | large (unilm's beit3 configs)
      beit3_overrides={},           # BEiT3Config fields to override (reduced sizes)
      fusion=a.fusion,              # EVF paper Table 3: early (official) | text | late
      pooling=a.pooling,            # EVF paper Table 5: vision_cls (official) | text_cls | mean
      multimask=False,              # official EVF-SAM (SAM-H): single mask
      max_tokens=40,                # text length of a batch (<s> ... </s>, right-padded); longer texts are cut
      pos_embed_init="zeros",       # SAM ViT's position embedding before any checkpoint: "zeros" (SAM) | "sincos"
      dtype="float32",
  ))
  # Pretrained parts (converted once; see README "Converting the official weights").
  c.init = mlc.ConfigDict(dict(
      sam="weights/sam_vit_h",      # python -m jaxris.convert.sam --src sam_vit_h_4b8939.pth --out weights/sam_vit_h
      beit3="weights/beit3_large",  # python -m jaxris.convert.beit3 --src beit3_large_patch16_224.pth --out ...
      tokenizer="weights/beit3.spm",  # BEiT-3's sentencepiece model (unilm beit3 README)
      evf="",                       # a converted EVF-SAM directory: start from released weights instead
      sam_decoder="",               # a converted SAM whose prompt encoder + mask decoder replace sam's
  ))
  # Data: SAM's 1024 px view (longest side, padded) plus BEiT-3's 224 px square view.
  c.data = common.refcoco_data(a.dataset, preprocess="evf", image_size=1024, evf_size=224)

  # Optimisation (LISA's, the code base EVF-SAM trains with): global batch 128 = 16 accumulated
  # micro-batches of 8, 15k iterations, AdamW (0.9, 0.95) 1e-4 with 100 warm-up steps, then linear decay.
  c.batch_size = 128
  c.grad_accum = 16
  c.epochs = 0
  c.steps = a.steps or 15000
  c.optimizer = mlc.ConfigDict(dict(
      lr=1e-4, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.0, grad_clip=1.0,
      lr_scale=(),                  # ((module prefix, multiplier), ...): per-module learning rates
      schedule="linear", warmup_steps=100, warmup_epochs=0.0, warmup_lr=0.0, min_lr=0.0,
      milestones=(), gamma=1.0,     # used by schedule="step" only
  ))
  c.ema_decay = 0.0
  c.freeze = tuple(filter(None, a.freeze.split("+")))  # EVF Table 4: add visual_model.prompt_encoder / mask_decoder
  c.loss = "evf"                    # 2 x BCE + 0.5 x Dice (LISA's weights; EVF's own are unreleased)
  c.loss_weights = {}              # keyword weights of a structured loss (the bridge's); none here

  # Evaluation as EVF-SAM's eval.py: logits resized to the original size, then > 0.
  c.threshold = 0.5
  c.eval_resize = "logits"
  common.run_settings(c)
  c.eval_every = 1000

  if a.refshapes:
    # CPU-sized variant on RefShapes: the small SAM of common.cpu_sam (random image encoder, MobileSAM's
    # trained prompt encoder and mask decoder) and a 4-block BEiT-3 of width 128, random (no pretrained
    # BEiT-3 is this small), with MiniLM's WordPiece vocabulary whose text table is learnt from scratch.
    # Nothing is frozen unless freeze= is given.
    common.cpu_sam(c.model)
    c.model.beit3 = "base"
    c.model.beit3_overrides = dict(encoder_embed_dim=128, encoder_attention_heads=4, encoder_ffn_embed_dim=512,
                                   encoder_layers=4, img_size=64, patch_size=8, max_source_positions=64)
    c.model.max_tokens = 20
    c.init.sam = ""
    c.init.sam_decoder = common.REAL_SAM_DECODER
    c.init.beit3 = ""
    c.init.tokenizer = "minilm"
    c.data = common.refshapes_data()
    c.data.preprocess = "evf"
    c.data.evf_size = 64
    c.batch_size = 16
    c.grad_accum = 1
    c.steps = a.steps or 700
    c.optimizer.lr = 1e-3
    c.optimizer.warmup_steps = 60
    c.optimizer.min_lr = 1e-5
    c.freeze = tuple(filter(None, a.freeze.split("+"))) if "freeze=" in (arg or "") else ()
    common.refshapes_run_settings(c)
  return c
