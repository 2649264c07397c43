"""DIT-SAM Default fusion with 4 extra mask-decoder layers (Table 1 "Add 4") on SAM vit-b.

  python -m jaxris.train --config configs/add4_vitb.py --workdir runs/add4_vitb               # the paper's setting
  python -m jaxris.train --config configs/add4_vitb.py:refshapes --workdir runs/add4_vitb_rs  # CPU-sized, built-in data

Arguments after the colon (comma-separated): refshapes, freeze=visual_encoder[+lang_encoder] (the
frozen-encoder rows), dataset=refcoco|refcoco+|refcocog_umd|refcocog_google, steps=N.
"""

from jaxris.configs import dit_config


def get_config(arg=None):
  return dit_config("default", variant="vit_b", extra_decoder_layers=4, arg=arg, epochs=25)
