"""Convert an official Segment Anything checkpoint to jaxris weights (no PyTorch needed to load them).

  python -m jaxris.convert.sam --src sam_vit_b_01ec64.pth --out weights/sam_vit_b
  python convert/sam.py --src sam_vit_b_01ec64.pth --out weights/sam_vit_b      # the same, from a checkout

The official checkpoints (sam_vit_b_01ec64.pth, sam_vit_l_0b3195.pth, sam_vit_h_4b8939.pth) come
from the facebookresearch/segment-anything README; a .safetensors file works too. The checkpoint is
read with torch.load(weights_only=True). The variant is read from the tensor shapes; --variant forces
one. Conversion is strict: any missing, unexpected or mis-shaped tensor stops it, with all offending
names listed. OUT gets config.json + params.safetensors; load it with jaxris.weights.sam.load(OUT).
"""

import argparse
import os
import sys


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m jaxris.convert.sam", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--src", required=True, help="official checkpoint (.pth, or .safetensors)")
  p.add_argument("--out", required=True, help="output directory for config.json + params.safetensors")
  p.add_argument("--variant", help="force the variant (vit_b, vit_l, vit_h, ...: jaxris.models.sam.sam.VARIANTS) "
                                   "instead of inferring it")
  args = p.parse_args(argv)
  if not os.path.isfile(args.src):
    print(f"convert/sam.py: error: checkpoint not found: {args.src}", file=sys.stderr)
    return 2

  from jaxris.weights import sam as sam_weights  # after argparse, so --help is instant

  try:
    cfg, params = sam_weights.convert_state_dict(sam_weights.read_checkpoint(args.src), variant=args.variant)
    sam_weights.save(args.out, cfg, params, progress=True)
  except (OSError, ValueError) as e:  # ConversionError, ReadError, an unknown --variant: messages name the problem
    print(f"convert/sam.py: error: {e}", file=sys.stderr)
    return 2
  enc = cfg.encoder
  size = (f"{enc.depth} blocks x {enc.embed_dim} wide, {enc.img_size}px input" if hasattr(enc, "depth")
          else type(enc).__name__)
  print(f"converted {len(params)} tensors: {size} -> {args.out}")
  return 0


if __name__ == "__main__":
  if not __package__:  # run by path (python convert/sam.py): import jaxris from this checkout, not this folder
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
  sys.exit(main())
