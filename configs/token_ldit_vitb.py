"""DIT-SAM token L-DIT (raw BERT tokens plus a learnt token per block) on SAM vit-b (official config/token_layer_wise.yaml).

  python -m jaxris.train --config configs/token_ldit_vitb.py --workdir runs/token_ldit_vitb               # the paper's setting
  python -m jaxris.train --config configs/token_ldit_vitb.py:refshapes --workdir runs/token_ldit_vitb_rs  # CPU-sized, built-in data

Slots before block i: BERT tokens + tokens[i] (see jaxris/models/ris/dit.py). With refshapes the
MiniLM text (384 wide) is mapped to the 128-wide ViT by a prob_text Linear first; the official
code has the token variants for ViT-B only, where BERT and the ViT are both 768 wide.

Arguments after the colon (comma-separated): refshapes, freeze=visual_encoder[+lang_encoder] (the
frozen-encoder rows), dataset=refcoco|refcoco+|refcocog_umd|refcocog_google, steps=N.
"""

from jaxris.configs import dit_config


def get_config(arg=None):
  return dit_config("token_ldit", variant="vit_b", extra_decoder_layers=0, arg=arg, epochs=40)
