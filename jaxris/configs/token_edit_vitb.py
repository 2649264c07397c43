"""DIT-SAM token E-DIT (text projected once, then a learnt token added per block) on SAM vit-b (official config/e2e_token.yaml).

  python -m jaxris.train --config configs/token_edit_vitb.py --workdir runs/token_edit_vitb               # the paper's setting
  python -m jaxris.train --config configs/token_edit_vitb.py:refshapes --workdir runs/token_edit_vitb_rs  # CPU-sized, built-in data

Slots: Dropout(probs(BERT tokens)) before block 0, then the previous block's slots + tokens[i-1]
(see jaxris/models/ris/dit.py). The official config names MODEL '2e_token', a typo for e2e_token.
With refshapes the MiniLM text is mapped to the ViT width by a prob_text Linear first.

Arguments after the colon (comma-separated): refshapes, freeze=visual_encoder[+lang_encoder] (the
frozen-encoder rows), dataset=refcoco|refcoco+|refcocog_umd|refcocog_google, steps=N.
"""

import ml_collections as mlc

from jaxris.configs import common


def get_config(arg=None):
  a = common.parse_arg(arg, refshapes=False, freeze="", dataset="refcoco", steps=0)
  c = mlc.ConfigDict()
  c.name = "token_edit_vitb"
  c.seed = 0

  # Model: token E-DIT (Table 2) on SAM vit_b.
  c.model = common.dit_model(scheme="token_edit", sam_variant="vit_b", extra_decoder_layers=0)
  # Pretrained parts (converted once; see README "Converting the official weights").
  c.init = common.dit_init("vit_b")
  # Data: RefCOCO / RefCOCO+ / RefCOCOg at 512 px with DIT's transforms.
  c.data = common.refcoco_data(a.dataset, preprocess="dit", image_size=512)

  # Optimisation: 40 epochs of batch 64 (official), EMA-evaluated weights.
  c.batch_size = 64
  c.grad_accum = 1                  # micro-batches per optimizer step
  c.epochs = 40
  c.steps = a.steps                 # > 0: train exactly this many optimizer steps instead of `epochs`
  c.optimizer = common.dit_optimizer()
  c.ema_decay = 0.9997              # official: the evaluated and saved weights are an EMA; 0 disables
  c.freeze = tuple(filter(None, a.freeze.split("+")))  # the '*' rows: visual_encoder
  c.loss = "bce"                    # official; "bce+dice" | "evf" also exist
  c.loss_weights = {}              # keyword weights of a structured loss (the bridge's); none here

  # Evaluation: sigmoid > 0.35 at the input size, then resized to the original image (official test.py).
  c.threshold = 0.35
  c.eval_resize = "binary"
  common.run_settings(c)

  if a.refshapes:
    # CPU-sized variant on the built-in RefShapes data, trained in minutes: the small SAM of
    # common.cpu_sam (random image encoder; prompt encoder and mask decoder from MobileSAM's real SAM
    # decoder), the real all-MiniLM-L6-v2 frozen as text encoder, 1000 steps of batch 16 at lr 5e-4,
    # BCE + Dice, no EMA (every changed field is in common.dit_on_refshapes).
    common.dit_on_refshapes(c, freeze=a.freeze, steps=a.steps)
  return c
