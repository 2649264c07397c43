"""Converts an official BEiT-3 checkpoint into jaxris weights.

  python -m jaxris.convert.beit3 --src beit3_large_patch16_224.pth --out weights/beit3_large
  python convert/beit3.py --src beit3_large_patch16_224.pth --out weights/beit3_large   # from a checkout

SRC is a unilm BEiT-3 .pth (state_dict under "model", encoder keys prefixed "beit3.") or a bare
torchscale BEiT3 state_dict (no prefix); the prefix is detected unless --prefix is given. The
variant (base, large, reduced sizes) is read from the shapes. Known task heads of unilm's
fine-tuned checkpoints (head, fc_norm, pooler, ...) are ignored; anything else that is not
part of the encoder is an error listing every such key, and can be ignored explicitly with
--ignore REGEX (repeatable). DIR gets config.json + params.safetensors (no PyTorch needed to
read them); load it with jaxris.weights.beit3.load(DIR). The checkpoint is read with
torch.load(weights_only=True).
"""

from __future__ import annotations

import argparse
import math
import os
import sys


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m jaxris.convert.beit3", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--src", required=True, help="BEiT-3 checkpoint (.pth, or .safetensors)")
  parser.add_argument("--out", required=True, help="output directory (created if needed)")
  parser.add_argument("--prefix", default=None,
                      help="key prefix of the encoder (default: 'beit3.' if the keys have it, else none)")
  parser.add_argument("--ignore", action="append", default=[], metavar="REGEX",
                      help="also ignore source keys matching REGEX in full (repeatable)")
  parser.add_argument("--num-heads", type=int, default=None,
                      help="attention heads, for widths other than the official 768 (12) and 1024 (16)")
  args = parser.parse_args(argv)

  from jaxris.weights import beit3  # after argparse, so --help is instant

  if not os.path.isfile(args.src):
    print(f"error: {args.src} not found (BEiT-3 checkpoints: microsoft/unilm beit3 README, e.g. "
          "https://github.com/addf400/files/releases/download/beit3/beit3_large_patch16_224.pth)", file=sys.stderr)
    return 2
  try:
    state_dict = beit3.read_checkpoint(args.src)
    prefix = args.prefix
    if prefix is None:
      prefix = beit3.PREFIX if any(k.startswith(beit3.PREFIX) for k in state_dict) else ""
    cfg, params = beit3.convert_state_dict(state_dict, prefix=prefix,
                                           ignore=tuple(beit3.UNILM_HEADS) + tuple(args.ignore),
                                           num_heads=args.num_heads)
    beit3.save(args.out, cfg, params, progress=True)
  except (OSError, ValueError) as e:  # ConversionError is a ValueError; its message lists every name
    print(f"error: {e}", file=sys.stderr)
    return 2
  n = sum(math.prod(params.shape(k)) for k in params)  # from the shapes: reading the values again costs GBs
  print(f"wrote {args.out}: BEiT-3 {cfg.encoder_layers} layers, {cfg.encoder_embed_dim} wide, "
        f"{cfg.encoder_attention_heads} heads, {cfg.img_size}px, vocab {cfg.vocab_size}, {n / 1e6:.1f}M parameters")
  return 0


if __name__ == "__main__":
  if not __package__:  # run by path (python convert/beit3.py): import jaxris from this checkout, not this folder
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
  sys.exit(main())
