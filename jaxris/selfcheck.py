"""Self-check: jaxris SAM against the official PyTorch SAM, end to end, on a real photograph.

  python -m jaxris.selfcheck [--variant vit_b]

No pretrained SAM weights can ship with jaxris, so this builds the official segment_anything
model with random weights, saves it as an official-style .pth checkpoint, converts it exactly as
``convert/sam.py`` does, predicts with point and box prompts through ``python -m jaxris.predict``
on skimage's "coffee" photograph, runs the official SamPredictor on the same prompts and reports
how closely the two agree. Needs the test extras (PyTorch, segment-anything):
pip install -e ".[test]".
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

POINTS = [(300.0, 200.0, 1), (120.0, 330.0, 0)]
BOX = (180.0, 60.0, 480.0, 380.0)
TOLERANCE = 1e-4  # max abs error relative to the logits' scale, as in the parity tests


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--variant", default="vit_b", choices=["vit_b", "vit_l", "vit_h"], help="official SAM size")
  p.add_argument("--seed", type=int, default=0, help="seed of the random weights")
  args = p.parse_args(argv)
  try:
    import segment_anything
    import torch
  except ImportError as e:
    print(f"jaxris.selfcheck: error: {e.name} is missing; install the test extras: pip install -e \".[test]\"",
          file=sys.stderr)
    return 2
  import skimage.data
  from PIL import Image

  from jaxris import predict
  from jaxris.weights import sam as sam_weights
  from jaxris.weights.random_torch import randomize_

  work = tempfile.mkdtemp(prefix="jaxris_selfcheck_")
  t0 = time.perf_counter()
  torch.manual_seed(args.seed)
  official = randomize_(segment_anything.sam_model_registry[args.variant](checkpoint=None), args.seed)
  checkpoint = os.path.join(work, f"sam_{args.variant}_random.pth")
  torch.save(official.state_dict(), checkpoint)
  print(f"[1/4] official segment_anything {args.variant} with random weights -> {checkpoint}")

  weights = os.path.join(work, f"sam_{args.variant}")
  cfg, params = sam_weights.convert_state_dict(sam_weights.read_checkpoint(checkpoint))
  sam_weights.save(weights, cfg, params)
  print(f"[2/4] converted {len(params)} tensors (as convert/sam.py does) -> {weights}")

  image = skimage.data.coffee()  # a real 400 x 600 photograph
  image_path = os.path.join(work, "coffee.png")
  Image.fromarray(image).save(image_path)
  out = os.path.join(work, "predict")
  cli = ["--weights", weights, "--image", image_path, "--box", ",".join(map(str, BOX)), "--multimask", "--out", out]
  for x, y, label in POINTS:
    cli += ["--point", f"{x},{y},{label}"]
  t1 = time.perf_counter()
  if predict.main(cli) != 0:
    return 1
  print(f"[3/4] python -m jaxris.predict {' '.join(cli)}  ({time.perf_counter() - t1:.1f} s incl. compilation)")
  ours = np.load(os.path.join(out, "coffee_logits.npy"))

  ref_predictor = segment_anything.SamPredictor(official)
  with torch.no_grad():
    ref_predictor.set_image(image)
    ref, _, _ = ref_predictor.predict(point_coords=np.array([pt[:2] for pt in POINTS]),
                                      point_labels=np.array([pt[2] for pt in POINTS]), box=np.array(BOX),
                                      multimask_output=True, return_logits=True)
  print("[4/4] official SamPredictor.predict(..., return_logits=True) on the same prompts")

  scale = float(np.abs(ref).max())
  err = float(np.abs(ours - ref).max())
  agree = [float(((o > 0) == (r > 0)).mean()) for o, r in zip(ours, ref)]
  ok = ours.shape == ref.shape and err <= TOLERANCE * scale
  print(f"\nmask logits {ours.shape} at the original image size:")
  print(f"  max |jaxris - official| = {err:.2e}  ({err / scale:.1e} of the logits' scale {scale:.3g}; "
        f"tolerance {TOLERANCE:.0e})")
  print(f"  binary masks agree on {', '.join(f'{100 * a:.4f}%' for a in agree)} of pixels")
  print(f"  outputs in {out}; total {time.perf_counter() - t0:.0f} s")
  print("PASS: jaxris matches the official SAM" if ok else "FAIL: jaxris and the official SAM disagree")
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
