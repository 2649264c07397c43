"""python -m jaxris.data.refshapes --out DIR --split val --count 16: a contact sheet PNG."""

import argparse
import os

from jaxris.data.refshapes.render import contact_sheet
from jaxris.data.refshapes.scene import SPLITS, RefShapesConfig, split_size


def main(argv=None):
  parser = argparse.ArgumentParser(
      prog="python -m jaxris.data.refshapes",
      description="RefShapes, the built-in synthetic referring-segmentation dataset. "
      "Writes a contact sheet PNG (DIR/refshapes_<split>_<start>.png) of a few examples: "
      "each image with its target mask outlined in white and its referring expressions "
      "underneath, so a person can check that every expression fits exactly the outlined "
      "shape. Splits: train/val (same distribution), testA (more shapes), testB (targets "
      "are held-out colour+kind combinations).",
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_argument("--out", required=True, help="directory to write the PNG into")
  parser.add_argument("--split", default="val", choices=SPLITS)
  parser.add_argument("--start", type=int, default=0, help="first example index")
  parser.add_argument("--count", type=int, default=16, help="number of examples")
  parser.add_argument("--columns", type=int, default=4)
  parser.add_argument("--image-size", type=int, default=RefShapesConfig.image_size)
  parser.add_argument("--seed", type=int, default=RefShapesConfig.seed)
  parser.add_argument("--noise", type=float, default=RefShapesConfig.noise)
  args = parser.parse_args(argv)
  config = RefShapesConfig(image_size=args.image_size, seed=args.seed, noise=args.noise)
  if not 0 <= args.start or args.start + args.count > split_size(config, args.split):
    parser.error(f"--start/--count go past the {args.split} split "
                 f"({split_size(config, args.split)} examples)")
  os.makedirs(args.out, exist_ok=True)
  path = os.path.join(args.out, f"refshapes_{args.split}_{args.start}.png")
  contact_sheet(config, args.split, args.start, args.count, args.columns).save(path)
  print(path)


if __name__ == "__main__":
  main()
