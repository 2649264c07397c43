"""Self-check: jaxris against the official PyTorch code, end to end, on real photographs.

  python -m jaxris.selfcheck                              # the real MobileSAM, 3 photographs
  python -m jaxris.selfcheck --photos chelsea --out out/  # one photograph, overlays in out/
  python -m jaxris.selfcheck --model sam_vit_b_random     # SAM ViT-B with random weights

Default (--model mobile_sam): the official MobileSAM checkpoint (``mobile_sam.pt``, fetched and
sha256-checked by ``python -m jaxris.weights.fetch mobile_sam`` into its cache, reused when already
there) is converted into a temporary directory and loaded by jaxris; the official ``mobile_sam``
code loads the same file. On each photograph from ``skimage.data`` (chelsea, coffee, astronaut),
each side encodes the image once, then answers a point and a box prompt, single mask and multimask,
at the original image size. A table gives, per photograph and prompt: the max |logits difference|
relative to the official logits' scale, the share of mask pixels that are equal, the max
difference of the predicted IoUs, and PASS/FAIL against the tolerances of the real-weight parity
tests (tests/test_mobile_sam.py: logits within 1e-3 of scale, masks equal on >= 99.9% of pixels,
IoU within 1e-3). Overlays (jaxris | official, best mask of each) go to --out (default: a new
temporary directory, printed).

--model sam_vit_{b,l,h}_random: no pretrained SAM ships with jaxris, so this builds the official
segment_anything model with random weights, saves it as an official-style .pth checkpoint,
converts it exactly as ``convert/sam.py`` does, predicts with point and box prompts through
``python -m jaxris.predict`` on skimage's "coffee" photograph and compares with the official
SamPredictor (tolerance 1e-4 of scale).

Needs the test extras (PyTorch, mobile_sam, segment-anything): pip install -e ".[test]".
Exit code 0 when everything agrees, 1 when something disagrees, 2 when a package is missing or the
checkpoint cannot be fetched (one line on stderr).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings

import numpy as np

PROG = "jaxris.selfcheck"

# --- the real MobileSAM on photographs ------------------------------------------------------------

# Per photograph of skimage.data: a foreground point (x, y) and a box (x0, y0, x1, y1), in its pixels
# (the prompts of tests/test_mobile_sam.py).
PHOTOS = {
    "chelsea": dict(point=(230, 200), box=(10, 5, 400, 299)),      # the cat
    "coffee": dict(point=(290, 150), box=(170, 15, 412, 312)),     # the cup
    "astronaut": dict(point=(225, 120), box=(278, 340, 508, 511)),  # her face; the helmet
}
CASES = [(prompt, multimask) for prompt in ("point", "box") for multimask in (False, True)]
# The tolerances of the real-weight parity tests.
LOGITS_TOL, MASK_AGREEMENT, IOU_TOL = 1e-3, 0.999, 1e-3

# --- SAM with random weights (the big ViT) --------------------------------------------------------

POINTS = [(300.0, 200.0, 1), (120.0, 330.0, 0)]
BOX = (180.0, 60.0, 480.0, 380.0)
TOLERANCE = 1e-4  # max abs error relative to the logits' scale, as in the random-weight parity tests

MODELS = ["mobile_sam", "sam_vit_b_random", "sam_vit_l_random", "sam_vit_h_random"]


def _error(message: str) -> int:
  print(f"{PROG}: error: {' '.join(str(message).split())}", file=sys.stderr)
  return 2


def _missing(e: ImportError) -> int:
  return _error(f"{e.name} is missing; install the test extras: pip install -e \".[test]\"")


def _photos(text: str) -> list[str]:
  names = [n.strip() for n in text.split(",") if n.strip()]
  unknown = [n for n in names if n not in PHOTOS]
  if not names or unknown:
    raise argparse.ArgumentTypeError(f"unknown photo(s) {unknown or text!r}; choose from {', '.join(PHOTOS)}")
  return names


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog=f"python -m {PROG}", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", default="mobile_sam", choices=MODELS,
                 help="mobile_sam: the real checkpoint (default); sam_vit_*_random: official SAM, random weights")
  p.add_argument("--photos", type=_photos, default=list(PHOTOS),
                 help=f"comma-separated skimage.data photographs for mobile_sam (default: {','.join(PHOTOS)})")
  p.add_argument("--out", help="output directory for the overlays (default: a new temporary directory)")
  p.add_argument("--cache", help="where mobile_sam.pt is kept (default: $JAXRIS_CACHE, else ~/.cache/jaxris)")
  p.add_argument("--seed", type=int, default=0, help="seed of the random weights (sam_vit_*_random)")
  args = p.parse_args(argv)
  if args.model == "mobile_sam":
    return check_mobile_sam(args)
  return check_random_sam(args, args.model.split("_")[1] + "_" + args.model.split("_")[2])


def _draw_prompt(picture, prompt: str, spec: dict, colour=(255, 60, 60)):
  from PIL import ImageDraw
  d = ImageDraw.Draw(picture)
  if prompt == "point":
    x, y = spec["point"]
    d.ellipse((x - 6, y - 6, x + 6, y + 6), fill=colour, outline=(255, 255, 255), width=2)
  else:
    d.rectangle(spec["box"], outline=colour, width=3)


def _overlay_pair(image, ours, ref, prompt: str, spec: dict, title: str):
  """jaxris (left) and official (right) best masks over the photograph, prompt drawn, one title line."""
  from PIL import Image, ImageDraw

  from jaxris.visualize import overlay
  h, w = image.shape[:2]
  gap, top = 8, 18
  canvas = Image.new("RGB", (2 * w + gap, h + top), (255, 255, 255))
  for i, (mask, label) in enumerate([(ours, "jaxris"), (ref, "official mobile_sam")]):
    panel = Image.fromarray(overlay(image, mask))
    _draw_prompt(panel, prompt, spec)
    canvas.paste(panel, (i * (w + gap), top))
    ImageDraw.Draw(canvas).text((i * (w + gap) + 4, 3), f"{label}: {title}", fill=(0, 0, 0))
  return canvas


def check_mobile_sam(args) -> int:
  try:
    import torch
    with warnings.catch_warnings():  # mobile_sam's imports use the deprecated torch.jit.script
      warnings.simplefilter("ignore", FutureWarning)
      from mobile_sam import SamPredictor as OfficialPredictor
      from mobile_sam.build_sam import build_sam_vit_t
  except ImportError as e:
    return _missing(e)
  import jax
  import skimage.data

  from jaxris.inference.sam_predictor import SamPredictor
  from jaxris.weights import fetch
  from jaxris.weights import sam as sam_weights

  out = args.out or tempfile.mkdtemp(prefix="jaxris_selfcheck_")
  os.makedirs(out, exist_ok=True)
  t0 = time.perf_counter()
  work = tempfile.mkdtemp(prefix="jaxris_selfcheck_weights_")
  weights = os.path.join(work, "mobile_sam")
  try:
    checkpoint = fetch.fetch_checkpoint("mobile_sam", args.cache, log=lambda m: print(f"  {m}"))
    fetch.fetch("mobile_sam", weights, args.cache,  # converted as the fetch command converts it
                log=lambda m: None if m.startswith("fetch: using") else print(f"  {m}"))
  except (fetch.FetchError, OSError, ValueError) as e:
    return _error(f"cannot fetch the MobileSAM checkpoint: {e}")
  print(f"[1/3] official MobileSAM checkpoint {checkpoint}, converted -> {weights}")

  official = build_sam_vit_t()
  official.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
  # eval() after loading: build_sam_vit_t(checkpoint=...) calls it before, which leaves TinyViT's
  # cached attention biases at zero (see jaxris/models/sam/tiny_vit.py).
  official.eval()
  ref = OfficialPredictor(official)
  ours = SamPredictor(sam_weights.load(weights))
  print("[2/3] official mobile_sam.build_sam_vit_t() and jaxris SamPredictor loaded the same weights")

  rows, ok = [], True
  print(f"[3/3] {len(args.photos)} photograph(s) x {len(CASES)} prompts; overlays -> {out}")
  for photo in args.photos:
    image = getattr(skimage.data, photo)()
    spec = PHOTOS[photo]
    t1 = time.perf_counter()
    with torch.no_grad():
      ref.set_image(image)
    t_ref = time.perf_counter() - t1
    t1 = time.perf_counter()
    with jax.default_matmul_precision("highest"):
      ours.set_image(image)
      jax.block_until_ready(ours.features)
    t_ours = time.perf_counter() - t1
    print(f"  {photo} {image.shape[1]}x{image.shape[0]}: image encoder official {t_ref:.1f} s, "
          f"jaxris {t_ours:.1f} s (incl. compilation on first use)")
    for prompt, multimask in CASES:
      kwargs = (dict(point_coords=np.array([spec["point"]], float), point_labels=np.array([1])) if prompt == "point"
                else dict(box=np.array(spec["box"], float)))
      with torch.no_grad():
        ref_masks, ref_iou, _ = ref.predict(multimask_output=multimask, return_logits=True, **kwargs)
      with jax.default_matmul_precision("highest"):
        masks, iou, _ = ours.predict(multimask_output=multimask, return_logits=True, **kwargs)
      scale = max(float(np.abs(ref_masks).max()), 1e-6)
      same_shape = masks.shape == ref_masks.shape
      err = float(np.abs(masks - ref_masks).max()) / scale if same_shape else float("inf")
      agree = float(np.mean((masks > 0) == (ref_masks > 0))) if same_shape else 0.0
      iou_err = float(np.abs(iou - ref_iou).max()) if iou.shape == ref_iou.shape else float("inf")
      passed = bool(np.all(np.isfinite(masks))) and err <= LOGITS_TOL and agree >= MASK_AGREEMENT and iou_err <= IOU_TOL
      ok &= passed
      kind = "multimask" if multimask else "single"
      rows.append((photo, f"{image.shape[1]}x{image.shape[0]}", prompt, kind, f"{err:.1e}", f"{100 * agree:.5f}",
                   f"{iou_err:.1e}", f"{float(iou.max()):.3f}", "PASS" if passed else "FAIL"))
      best, ref_best = int(np.argmax(iou)), int(np.argmax(ref_iou))
      title = f"{photo}, {prompt}, {kind}, IoU {float(iou[best]):.3f}"
      picture = _overlay_pair(image, masks[best] > 0, ref_masks[ref_best] > 0, prompt, spec, title)
      picture.save(os.path.join(out, f"{photo}_{prompt}_{kind}.png"))

  header = ("photo", "size", "prompt", "masks", "logits err/scale", "masks equal %", "IoU diff", "pred. IoU", "result")
  widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
  print(f"\njaxris vs official MobileSAM (tolerances: logits {LOGITS_TOL:.0e} of scale, masks equal on >= "
        f"{100 * MASK_AGREEMENT:g}% of pixels, IoU {IOU_TOL:.0e}):")
  for r in [header, tuple("-" * w for w in widths), *rows]:
    print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
  print(f"overlays (jaxris | official) in {out}; total {time.perf_counter() - t0:.0f} s")
  print("PASS: jaxris matches the official MobileSAM on every photograph and prompt" if ok
        else "FAIL: jaxris and the official MobileSAM disagree (see the table)")
  return 0 if ok else 1


def check_random_sam(args, variant: str) -> int:
  try:
    import segment_anything
    import torch
  except ImportError as e:
    return _missing(e)
  import skimage.data
  from PIL import Image

  from jaxris import predict
  from jaxris.weights import sam as sam_weights
  from jaxris.weights.random_torch import randomize_

  work = tempfile.mkdtemp(prefix="jaxris_selfcheck_")
  t0 = time.perf_counter()
  torch.manual_seed(args.seed)
  official = randomize_(segment_anything.sam_model_registry[variant](checkpoint=None), args.seed)
  checkpoint = os.path.join(work, f"sam_{variant}_random.pth")
  torch.save(official.state_dict(), checkpoint)
  print(f"[1/4] official segment_anything {variant} with random weights -> {checkpoint}")

  weights = os.path.join(work, f"sam_{variant}")
  cfg, params = sam_weights.convert_state_dict(sam_weights.read_checkpoint(checkpoint))
  sam_weights.save(weights, cfg, params)
  print(f"[2/4] converted {len(params)} tensors (as convert/sam.py does) -> {weights}")

  image = skimage.data.coffee()  # a real 400 x 600 photograph
  image_path = os.path.join(work, "coffee.png")
  Image.fromarray(image).save(image_path)
  out = args.out or os.path.join(work, "predict")
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
