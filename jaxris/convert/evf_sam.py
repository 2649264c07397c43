"""Converts an EVF-SAM checkpoint directory (hustvl/EVF-SAM on Hugging Face) into jaxris weights.

  python -m jaxris.convert.evf_sam --src evf-sam --out weights/evf_sam   # e.g. a clone of YxZhang/evf-sam
  python convert/evf_sam.py --src evf-sam --out weights/evf_sam          # the same, from a checkout
  python -m jaxris.predict --weights weights/evf_sam --image photo.jpg --text "zebra top left" --out out/

SRC is the Hugging Face directory: config.json (architectures ["EvfSamModel"]), the weights
(pytorch_model.bin, read with torch.load(weights_only=True), or model.safetensors; sharded
*.index.json sets too; fp16 weights become float32) and the tokenizer (sentencepiece.bpe.model,
tokenizer_config.json, special_tokens_map.json, added_tokens.json for the multitask model's
"[semantic]" token). Both YxZhang/evf-sam and YxZhang/evf-sam-multitask convert. The sizes
(SAM ViT, BEiT-3 base/large) are read from the shapes and checked with config.json.

The conversion is strict: every tensor is used (vision_embed.mask_token, never read by EVF-SAM,
is ignored by name), every parameter is filled with the right shape, and all mismatches are
listed at once. EVF-SAM2 (EvfSam2Model) and EVF-Effi-SAM (EvfEffiSamModel) are refused: their
SAM-2 / EfficientSAM backbones are out of scope. DIR gets config.json + params.safetensors (no
PyTorch needed to read them) and the tokenizer files, so it is self-contained; load it with
jaxris.weights.evf_sam.load(DIR) or jaxris.inference.evf_predictor.EvfPredictor(DIR).
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m jaxris.convert.evf_sam", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--src", required=True, help="EVF-SAM Hugging Face checkpoint directory")
  parser.add_argument("--out", required=True, help="output directory (created if needed)")
  args = parser.parse_args(argv)

  from jaxris.weights import evf_sam  # after argparse, so --help is instant

  if not os.path.isdir(args.src):
    print(f"error: {args.src} is not a directory; download an EVF-SAM checkpoint first, e.g. "
          "git clone https://huggingface.co/YxZhang/evf-sam", file=sys.stderr)
    return 2
  try:
    cfg, n = evf_sam.convert_dir(args.src, args.out, progress=True)
  except (OSError, ValueError) as e:  # ConversionError is a ValueError; its message lists every name
    print(f"error: {e}", file=sys.stderr)
    return 2
  enc = cfg.sam.encoder
  print(f"wrote {args.out}: EVF-SAM with SAM ViT {enc.depth} blocks x {enc.embed_dim} at {enc.img_size}px, "
        f"BEiT-3 {cfg.beit3.encoder_layers} layers x {cfg.beit3.encoder_embed_dim}, {n / 1e6:.1f}M parameters")
  return 0


if __name__ == "__main__":
  if not __package__:  # run by path (python convert/evf_sam.py): import jaxris from this checkout, not this folder
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
  sys.exit(main())
