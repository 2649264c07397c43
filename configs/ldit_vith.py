"""DIT-SAM L-DIT (layer-wise text injection) on SAM vit-h.

  python -m jaxris.train --config configs/ldit_vith.py --workdir runs/ldit_vith               # the paper's setting
  python -m jaxris.train --config configs/ldit_vith.py:refshapes --workdir runs/ldit_vith_rs  # CPU-sized, built-in data

Arguments after the colon (comma-separated): refshapes, freeze=visual_encoder[+lang_encoder] (the
frozen-encoder rows), dataset=refcoco|refcoco+|refcocog_umd|refcocog_google, steps=N.
"""

from jaxris.configs import dit_config


def get_config(arg=None):
  return dit_config("ldit", variant="vit_h", extra_decoder_layers=0, arg=arg, epochs=25)
