"""DIT-SAM token E-DIT (text projected once, then a learnt token added per block) on SAM vit-b (official config/e2e_token.yaml).

  python -m jaxris.train --config configs/token_edit_vitb.py --workdir runs/token_edit_vitb               # the paper's setting
  python -m jaxris.train --config configs/token_edit_vitb.py:refshapes --workdir runs/token_edit_vitb_rs  # CPU-sized, built-in data

Slots: Dropout(probs(BERT tokens)) before block 0, then the previous block's slots + tokens[i-1]
(see jaxris/models/ris/dit.py). The official config names MODEL '2e_token', a typo for e2e_token.
With refshapes the MiniLM text is mapped to the ViT width by a prob_text Linear first.

Arguments after the colon (comma-separated): refshapes, freeze=visual_encoder[+lang_encoder] (the
frozen-encoder rows), dataset=refcoco|refcoco+|refcocog_umd|refcocog_google, steps=N.
"""

from jaxris.configs import dit_config


def get_config(arg=None):
  return dit_config("token_edit", variant="vit_b", extra_decoder_layers=0, arg=arg, epochs=40)
