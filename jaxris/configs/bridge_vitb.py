"""The SAM+CLIP bridge ("Feature Design for Bridging SAM and CLIP toward RIS", WACV 2025) on SAM ViT-B.

  python -m jaxris.train --config configs/bridge_vitb.py --workdir runs/bridge                      # RefCOCO
  python -m jaxris.train --config configs/bridge_vitb.py:dataset=grefcoco --workdir runs/bridge_g   # + no-target head
  python -m jaxris.train --config configs/bridge_vitb.py:refshapes --workdir runs/bridge_rs         # CPU-sized
  python -m jaxris.train --config configs/bridge_vitb.py:refshapes,no_target=1 --workdir runs/bridge_rs_nt

The official code (hitachi-rd-cv/dfam; shared/specs/bridge.md) as a recipe: frozen SAM ViT-B encoder,
frozen CLIP ViT-L/14-336 vision tower, bert-base-uncased (35 tokens; embeddings and layers 10-11 frozen,
as the official optimiser holds only layers 0-9), AdamW 5e-5, weight decay 0.05, full-model gradient
clipping to 0.01, 100k iterations of batch 64, lr x0.1 at 60k and 90k, images stretched to 1024 x 1024,
loss 2.0 BCE + 0.5 Dice on SAM's mask plus DFAM's set losses (and 0.1 x the no-target CE on gRefCOCO).

sparse_query: "bert_cls" (default, leak-free: the sparse prompt's query is BERT's [CLS]) or
"gt_category" -- an ORACLE: the official RefCOCO configs' query is the CLIP text embedding of the
target's *annotated* COCO category, at test time too (a ground-truth leak; spec §6). It is reported as
an oracle (logs, eval JSON "oracle": true) and jaxris.evaluate refuses it unless --allow_oracle.

Arguments after the colon (comma-separated): dataset=refcoco|refcoco+|refcocog_umd|grefcoco, refshapes,
no_target (RefShapes' no-target splits, with the head), sparse_query=bert_cls|gt_category (ORACLE), steps=N,
bce=2.0, dice=0.5 (the code's weights; the supplementary states the reverse), freeze=a+b (replaces the list).
Deliberate differences: evaluation is at the original image size (the official code scores in the 1024²
stretched frame); each expression is one GT instance (gRefCOCO's multi-object targets as their union).
"""

import ml_collections as mlc

from jaxris.configs import common

# Frozen as in the official code: both CLIP towers (only the vision one is built), SAM's image encoder,
# BERT's embeddings and layers 10-11, and the SAM decoder parts its _freeze lists (the prompt
# encoder's embeddings and mask downscaling, the IoU head).
OFFICIAL_FREEZE = ("clip", "sam_encoder", "bert.embeddings", "bert.encoder.layer.10", "bert.encoder.layer.11",
                   "prompt_encoder", "mask_decoder.iou_prediction_head")
# Reduced sizes of the CPU recipe: CLIP at a 12x12 grid (96 px, 8 px patches: 24 -> 12), 64-wide
# pyramids and decoders, 20 DFAM queries, 2 pixel-decoder layers; the SAM grid is common.cpu_sam's 16.
CPU_CLIP = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4, image_size=96,
                patch_size=8)
CPU_SIZES = dict(clip_sfp_dim=128, pixel_layers=2, pixel_ffn=256, dfam_queries=20, dfam_ffn=256, txt_ffn=512,
                 clip_text_dim=64, num_classes=6, num_category_ids=5)   # RefShapes' 5 kinds + "background"


def get_config(arg=None):
  a = common.parse_arg(arg, refshapes=False, no_target=False, dataset="refcoco", sparse_query="bert_cls", steps=0,
                       bce=2.0, dice=0.5, freeze="")
  c = mlc.ConfigDict()
  c.name = "bridge_vitb" + ("_ORACLE_gt_category" if a.sparse_query == "gt_category" else "")
  c.seed = 0

  # Model: see jaxris/models/ris/bridge/model.py.
  c.model = mlc.ConfigDict(dict(
      family="bridge",
      sam_variant="vit_b", sam_overrides={}, prompt_embed_dim=256, decoder_mlp_dim=2048,
      pos_embed_init="zeros",       # SAM ViT's position embedding before any checkpoint: "zeros" (SAM) | "sincos"
      clip_overrides={},            # CLIPVisionConfig fields over ViT-L/14-336 (used when init.clip is "")
      bridge_sizes={},              # BridgeConfig size fields (pixel decoder, DFAM, Txt2txt, tables)
      max_tokens=35,                # BERT tokens (official 35)
      bert_dropout=0.1,
      # "bert_cls" (leak-free default) | "gt_category": ORACLE, reads the annotated category at test time too
      sparse_query=a.sparse_query,
      no_target_head=a.dataset == "grefcoco" or a.no_target,
      dtype="float32",
  ))
  c.init = mlc.ConfigDict(dict(
      sam="weights/sam_vit_b",      # python -m jaxris.convert.sam --src sam_vit_b_01ec64.pth --out weights/sam_vit_b
      clip="weights/clip_vit_l14_336",  # python -m jaxris.convert.clip --src ViT-L-14-336px.pt --out ...
      bert="weights/bert-base-uncased",  # python -m jaxris.convert.bert --src <HF bert-base-uncased> --out ...
      constants="weights/bridge_constants",  # python -m jaxris.weights.bridge --clip weights/clip_vit_l14_336 --out ...
      sam_decoder="",
  ))
  c.data = common.refcoco_data(a.dataset, preprocess="bridge", image_size=1024)

  # Optimisation (official): AdamW 5e-5, wd 0.05, clip 0.01 (whole model), 100k x 64, x0.1 at 60k / 90k.
  c.batch_size = 64
  c.grad_accum = 1
  c.epochs = 0
  c.steps = a.steps or 100_000
  c.optimizer = mlc.ConfigDict(dict(
      lr=5e-5, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.05, grad_clip=0.01,
      lr_scale=(),                  # ((module prefix, multiplier), ...): per-module learning rates
      schedule="step", warmup_steps=0, warmup_epochs=0.0, warmup_lr=5e-5, min_lr=0.0,
      milestones=(), gamma=0.1,
      milestone_steps=(60_000, 90_000),  # lr x gamma at these iterations (the official MultiStepLR)
  ))
  c.ema_decay = 0.0
  c.freeze = tuple(filter(None, a.freeze.split("+"))) or OFFICIAL_FREEZE
  if a.sparse_query == "bert_cls":
    c.freeze = tuple(c.freeze) + ("clip_mlpl",)  # unused then; frozen as in the official code
  c.loss = "bridge"
  c.loss_weights = dict(bce=a.bce, dice=a.dice,   # main SAM loss: the code's 2.0 / 0.5
                        same_category_mask=a.dataset == "refcoco")  # refcoco.yaml's CRASSIFICATION_WEIGHT_MASK
  c.threshold = 0.5
  c.eval_resize = "logits"
  common.run_settings(c)
  c.eval_every = 5000
  c.eval_examples = 2000

  if a.refshapes:
    # CPU-sized: the small SAM of common.cpu_sam (random encoder, MobileSAM's trained decoder), a 4-block
    # 128-wide CLIP from random weights at a 12x12 grid, the real all-MiniLM-L6-v2 for text (frozen, as
    # the DIT refshapes recipes), reduced bridge modules, random fixed CLIP-text tables (a random CLIP
    # text tower would give random vectors too; the rows are RefShapes' 5 kinds + "background").
    common.cpu_sam(c.model)
    c.model.clip_overrides = CPU_CLIP
    c.model.bridge_sizes = CPU_SIZES
    c.model.max_tokens = 20
    c.model.bert_dropout = 0.0
    c.init = mlc.ConfigDict(dict(sam="", clip="", bert="minilm", constants="", sam_decoder=common.REAL_SAM_DECODER))
    c.data = common.refshapes_data()
    c.data.preprocess = "bridge"
    if a.no_target:
      c.data.train_split = "train_nt"
      c.data.eval_splits = ("val_nt", "testA_nt", "testB_nt")
    c.batch_size = 16
    c.steps = a.steps or 700
    c.optimizer.lr = 3e-4
    c.optimizer.grad_clip = 1.0
    c.optimizer.milestone_steps = ()
    c.freeze = tuple(filter(None, a.freeze.split("+"))) or ("clip", "sam_encoder", "bert")
    if a.sparse_query == "bert_cls":
      c.freeze = tuple(c.freeze) + ("clip_mlpl",)
    # 128² masks: 1024 points per mask (of 16384 pixels) instead of 12544 at 1024².
    c.loss_weights.update(num_points=1024, same_category_mask=False)
    common.refshapes_run_settings(c)
  return c
