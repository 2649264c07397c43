"""Convert an official Segment Anything checkpoint to jaxris weights (no PyTorch needed to load them).

  python convert/sam.py --src sam_vit_b_01ec64.pth --out weights/sam_vit_b

The official checkpoints (sam_vit_b_01ec64.pth, sam_vit_l_0b3195.pth, sam_vit_h_4b8939.pth) come
from the facebookresearch/segment-anything README. The variant is read from the tensor shapes;
--variant forces one. Conversion is strict: any missing, unexpected or mis-shaped tensor stops it,
with all offending names listed.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxris.weights import sam as sam_weights  # noqa: E402
from jaxris.weights.mapping import ConversionError  # noqa: E402


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--src", required=True, help="official checkpoint (.pth, or .safetensors)")
  p.add_argument("--out", required=True, help="output directory for config.json + params.safetensors")
  p.add_argument("--variant", choices=sorted(sam_weights.VARIANTS), help="force the variant instead of inferring it")
  args = p.parse_args(argv)
  if not os.path.isfile(args.src):
    print(f"convert/sam.py: error: checkpoint not found: {args.src}", file=sys.stderr)
    return 2
  try:
    state_dict = sam_weights.read_checkpoint(args.src)
    cfg, params = sam_weights.convert_state_dict(state_dict, variant=args.variant)
  except ConversionError as e:
    print(f"convert/sam.py: error: {e}", file=sys.stderr)
    return 2
  sam_weights.save(args.out, cfg, params)
  enc = cfg.encoder
  print(f"converted {len(params)} tensors: {enc.depth} blocks x {enc.embed_dim} wide, {enc.img_size}px input "
        f"-> {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
