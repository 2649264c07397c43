"""Converts a CLIP checkpoint (Hugging Face directory or OpenAI's .pt) into jaxris weights.

  python -m jaxris.convert.clip --src ViT-L-14-336px.pt --out weights/clip_vit_l_14_336
  python -m jaxris.convert.clip --src HF_CLIP_DIR --out weights/clip_vit_l_14_336
  python convert/clip.py --src ... --out ...          # the same, from a checkout

SRC is a Hugging Face CLIPModel directory (config.json + model.safetensors or pytorch_model.bin,
e.g. openai/clip-vit-large-patch14-336) or OpenAI's .pt (the TorchScript archive clip.load
downloads, read with torch.jit.load; or a plain state_dict in the same layout, read with
torch.load(weights_only=True)), whose sizes are read from the tensor shapes. DIR gets config.json
+ params.safetensors (no PyTorch needed to read them) and the tokenizer's vocabulary when one is
found: --vocab, else bpe_simple_vocab_16e6.txt.gz or vocab.json + merges.txt beside or inside SRC,
else the one `python -m jaxris.weights.fetch clip_vocab` cached. Load it with
jaxris.weights.clip.load(DIR). Any mismatch between checkpoint and model is an error listing
every offending name.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import warnings


def _one_line(message: str) -> str:
  # ConversionError lists names on indented lines; keep them all, on one line.
  return message.replace(":\n  ", ": ").replace("\n  ", ", ").replace("\n", "; ")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m jaxris.convert.clip", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--src", required=True, help="Hugging Face CLIP directory or OpenAI's CLIP .pt")
  parser.add_argument("--out", required=True, help="output directory (created if needed)")
  parser.add_argument("--vocab", default=None,
                      help="the tokenizer vocabulary to copy (bpe_simple_vocab_16e6.txt.gz); default: found "
                           "beside SRC or in the fetch cache")
  args = parser.parse_args(argv)

  from jaxris.weights import clip  # after argparse, so --help is instant

  try:
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always")
      config, vocab_files = clip.convert_dir(args.src, args.out, vocab=args.vocab, progress=True)
  except (OSError, ValueError) as e:  # ConversionError / ReadError are ValueErrors; the message lists every name
    print(f"error: {_one_line(str(e))}", file=sys.stderr)
    return 2
  for w in caught:
    print(f"warning: {w.message}", file=sys.stderr)
  v, t = config.vision, config.text
  n = sum(math.prod(s) for s in _shapes(args.out).values())
  print(f"wrote {args.out}: CLIP ViT {v.num_hidden_layers} layers x {v.hidden_size} ({v.num_attention_heads} heads), "
        f"patch {v.patch_size}, {v.image_size}px; text {t.num_hidden_layers} layers x {t.hidden_size}; projection "
        f"{config.projection_dim}; {n / 1e6:.1f}M parameters; vocabulary: "
        f"{', '.join(vocab_files) if vocab_files else 'none'}")
  return 0


def _shapes(directory: str) -> dict:
  from safetensors import safe_open

  with safe_open(os.path.join(directory, "params.safetensors"), framework="numpy") as f:
    return {k: f.get_slice(k).get_shape() for k in f.keys()}


if __name__ == "__main__":
  if not __package__:  # run by path (python convert/clip.py): import jaxris from this checkout, not this folder
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
  sys.exit(main())
