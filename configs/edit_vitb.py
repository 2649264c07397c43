"""DIT-SAM E-DIT (end-to-end text injection) on SAM vit-b.

  python -m jaxris.train --config configs/edit_vitb.py --workdir runs/edit_vitb               # the paper's setting
  python -m jaxris.train --config configs/edit_vitb.py:refshapes --workdir runs/edit_vitb_rs  # CPU-sized, built-in data

Arguments after the colon (comma-separated): refshapes, freeze=visual_encoder[+lang_encoder] (the
frozen-encoder rows), dataset=refcoco|refcoco+|refcocog_umd|refcocog_google, steps=N.
"""

from jaxris.configs import dit_config


def get_config(arg=None):
  return dit_config("edit", variant="vit_b", extra_decoder_layers=0, arg=arg, epochs=40)
