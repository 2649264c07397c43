"""DIT-SAM cross-attention text injection on SAM vit-b (official config/cross_attention.yaml).

  python -m jaxris.train --config configs/crossatt_vitb.py --workdir runs/crossatt_vitb               # the paper's setting
  python -m jaxris.train --config configs/crossatt_vitb.py:refshapes --workdir runs/crossatt_vitb_rs  # CPU-sized, built-in data

Slots: probs[0](BERT tokens) before block 0, then ln[i-1](probs[i](text) + Dropout(MHAtt(q=text,
k=v=previous slots))) (see jaxris/models/ris/dit.py). Not implemented: the official config also
trains at 10 random square scales from 224 to 512 (MULTI_SCALE, batch-level nearest resize); this
recipe trains at 512 only. The official cross-attention net imports a mask_decoder_v2.py that is
missing from the repository (its committed .pyc is the plain mask decoder, which is what runs here).
With refshapes the MiniLM text is mapped to the 128-wide ViT by a prob_text Linear first, and the
MHAtt keeps its official inner size (8 heads of 64).

Arguments after the colon (comma-separated): refshapes, freeze=visual_encoder[+lang_encoder] (the
frozen-encoder rows), dataset=refcoco|refcoco+|refcocog_umd|refcocog_google, steps=N.
"""

from jaxris.configs import dit_config


def get_config(arg=None):
  return dit_config("crossatt", variant="vit_b", extra_decoder_layers=0, arg=arg, epochs=25)
