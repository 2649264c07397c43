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

from jaxris.configs import evf_config


def get_config(arg=None):
  return evf_config(arg, sam_variant="vit_h", beit3="large")
