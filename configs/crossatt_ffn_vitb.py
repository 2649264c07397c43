"""DIT-SAM cross-attention + FFN text injection on SAM vit-b (official config/cross_attention_ffn.yaml).

  python -m jaxris.train --config configs/crossatt_ffn_vitb.py --workdir runs/crossatt_ffn_vitb               # the paper's setting
  python -m jaxris.train --config configs/crossatt_ffn_vitb.py:refshapes --workdir runs/crossatt_ffn_vitb_rs  # CPU-sized, built-in data

Slots before block i: ln[i](text + Dropout(MHA_FFN(q=text, k=v=image tokens entering block i)))
(see jaxris/models/ris/dit.py). Not implemented: the official config also trains at 10 random
square scales from 224 to 512 (MULTI_SCALE, batch-level nearest resize); this recipe trains at
512 only. The official net imports a missing mask_decoder_v2.py (its committed .pyc is the plain
mask decoder, used here) and unpacks two values from its BERT wrapper, which returns one: as
committed it does not run; this is the encoder it describes. With refshapes the MiniLM text is
mapped to the 128-wide ViT by a prob_text Linear first, and MHA_FFN keeps its official inner
sizes (8 heads of 64, FFN 2048).

Arguments after the colon (comma-separated): refshapes, freeze=visual_encoder[+lang_encoder] (the
frozen-encoder rows), dataset=refcoco|refcoco+|refcocog_umd|refcocog_google, steps=N.
"""

from jaxris.configs import dit_config


def get_config(arg=None):
  return dit_config("crossatt_ffn", variant="vit_b", extra_decoder_layers=0, arg=arg, epochs=25)
