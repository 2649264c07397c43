"""Predict masks for one image, or many, from the command line.

  python -m jaxris.predict --weights weights/sam_vit_b --image photo.jpg --point 320,240 --out out/
  python -m jaxris.predict --weights weights/sam_vit_b --image photo.jpg --box 10,20,300,400 --multimask --out out/
  python -m jaxris.predict --workdir runs/ldit --image photo.jpg --text "the red umbrella on the left" --out out/
  python -m jaxris.predict --weights weights/evf_sam --image photo.jpg --text "zebra top left" --out out/

Writes, for an image named S: S_mask.png (best mask, 0/255, original size), S_overlay.png (the
mask drawn over the image), S_logits.npy (float32 [K, H, W] mask logits at the original size;
K = 3 with --multimask, else 1) and S_scores.json (predicted IoU per mask; with --text, the
threshold and the mask's area). With --text the logits are shifted so that > 0 means
sigmoid > the trained recipe's threshold (0.35 for DIT, from the export's recipe.json); EVF-SAM weights (python -m jaxris.convert.evf_sam ...;
the family is read from DIR/config.json) take --text, optionally with --point/--box prompts, and
their logits > 0 is the mask, as in the official code. A SAM+CLIP bridge trained with its no-target
head prints "no target: ..." when the head says the phrase fits nothing (empty mask; scores.json
"no_target": true). Coordinates are
pixels of the original image, x to the right and y down. Bad input gives a one-line error and
exit code 2.

Many images: give --image several times and/or --image-dir DIR (every image file directly in DIR,
by suffix, sorted by name); the same prompts apply to each image. The model is loaded once and each
image encoded once (EVF-SAM text-only prompts run through its batch API, --batch-size images at a
time); a progress bar goes to stderr, and OUT gets the four files per image plus summary.json
(written files, the error of each input that failed and, for a bridge with a no-target head, the
images it called empty). An input that cannot be read, or whose
size does not fit the point/box prompts, is reported on stderr and skipped; the rest are written.
Exit code: 0 when every image was written, 1 when some failed (the summary line counts them), 2 for
a usage error (bad arguments, no images, missing weights), when nothing is written.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable

import numpy as np
from PIL import Image

from jaxris.data.image_io import ImageError, read_image
from jaxris.inference.evf_predictor import EvfPredictor
from jaxris.inference.export import read_recipe, weights_family
from jaxris.inference.sam_predictor import SamPredictor
from jaxris.inference.text_predictors import load_text_predictor
from jaxris.visualize import overlay
from jaxris.weights import evf_sam
from jaxris.weights import sam as sam_weights


class UsageError(Exception):
  """Bad input from the user: reported on one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
  def error(self, message):  # one line instead of usage + message
    raise UsageError(message)


def _numbers(text: str, counts: tuple[int, ...], what: str) -> list[float]:
  try:
    values = [float(v) for v in text.split(",")]
  except ValueError:
    raise argparse.ArgumentTypeError(f"{what} '{text}' is not comma-separated numbers") from None
  if len(values) not in counts or not all(np.isfinite(values)):
    raise argparse.ArgumentTypeError(f"{what} '{text}' needs {' or '.join(map(str, counts))} finite numbers")
  return values


def parse_point(text: str) -> tuple[float, float, int]:
  values = _numbers(text, (2, 3), "point")
  label = 1 if len(values) == 2 else values[2]
  if label not in (0, 1):
    raise argparse.ArgumentTypeError(f"point '{text}': the label must be 1 (foreground) or 0 (background)")
  return values[0], values[1], int(label)


def parse_box(text: str) -> tuple[float, float, float, float]:
  x0, y0, x1, y1 = _numbers(text, (4,), "box")
  if not (x0 < x1 and y0 < y1):
    raise argparse.ArgumentTypeError(f"box '{text}' must be X0,Y0,X1,Y1 with X0 < X1 and Y0 < Y1")
  return x0, y0, x1, y1


def build_parser() -> argparse.ArgumentParser:
  p = _Parser(prog="python -m jaxris.predict", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument("--weights", help="converted SAM or EVF-SAM weights directory (convert/sam.py, convert/evf_sam.py)")
  src.add_argument("--workdir", help="a jaxris.train output directory (its model/ is used) for --text")
  p.add_argument("--text", help="the referring expression (needs --workdir or EVF-SAM --weights)")
  p.add_argument("--image", action="append", default=[],
                 help="image file (any format PIL reads; converted to RGB); repeatable: several images")
  p.add_argument("--image-dir", metavar="DIR",
                 help=f"every image file directly in DIR ({' '.join(IMAGE_SUFFIXES)}), sorted by name")
  p.add_argument("--batch-size", type=int, default=4,
                 help="images per EVF-SAM batch when predicting many images with --text only (default 4)")
  p.add_argument("--point", action="append", type=parse_point, default=[], metavar="X,Y[,LABEL]",
                 help="a point prompt in pixels; LABEL 1 = foreground (default), 0 = background; repeatable")
  p.add_argument("--box", type=parse_box, metavar="X0,Y0,X1,Y1", help="a box prompt in pixels")
  p.add_argument("--multimask", action="store_true", help="return SAM's 3 candidate masks (best one saved as the mask)")
  p.add_argument("--out", required=True, help="output directory (created if missing)")
  return p


def _check_inside(args, height: int, width: int) -> None:
  for x, y, _ in args.point:
    if not (0 <= x <= width and 0 <= y <= height):
      raise UsageError(f"point {x:g},{y:g} is outside the {width}x{height} image")
  if args.box is not None:
    x0, y0, x1, y1 = args.box
    if not (0 <= x0 and 0 <= y0 and x1 <= width and y1 <= height):
      raise UsageError(f"box {x0:g},{y0:g},{x1:g},{y1:g} is outside the {width}x{height} image")


def write_outputs(out_dir: str, stem: str, image: np.ndarray, logits: np.ndarray, scores: np.ndarray,
                  extra: dict | None = None) -> dict:
  """Writes the four output files; returns their paths."""
  os.makedirs(out_dir, exist_ok=True)
  best = int(np.argmax(scores))
  mask = logits[best] > 0.0
  paths = {k: os.path.join(out_dir, f"{stem}_{k}") for k in ("mask.png", "overlay.png", "logits.npy", "scores.json")}
  Image.fromarray((mask * 255).astype(np.uint8)).save(paths["mask.png"])
  Image.fromarray(overlay(image, mask)).save(paths["overlay.png"])
  np.save(paths["logits.npy"], logits.astype(np.float32))
  with open(paths["scores.json"], "w") as f:
    json.dump({"iou_predictions": [float(s) for s in scores], "best": best, **(extra or {})}, f, indent=2)
  return paths


def run(args) -> dict:
  image = read_image(args.image)
  _check_inside(args, image.shape[0], image.shape[1])
  stem = os.path.splitext(os.path.basename(args.image))[0]
  if args.workdir is not None:
    return _run_text(args, image, stem)
  if weights_family(args.weights) == evf_sam.FAMILY:
    return _run_evf(args, image, stem)
  if args.text is not None:
    raise UsageError("--text needs --workdir (a trained text-prompted model) or EVF-SAM --weights; "
                     f"{args.weights} holds plain SAM")
  return _run_sam(args, image, stem)


def _check_evf_args(args) -> None:
  if not args.text or not args.text.strip():
    raise UsageError("EVF-SAM weights need a non-empty --text \"...\" (the referring expression)")
  if args.multimask:
    raise UsageError("--multimask is for SAM weights; EVF-SAM predicts one mask")


def _run_evf(args, image, stem) -> dict:
  _check_evf_args(args)
  logits = EvfPredictor(args.weights).predict(image, args.text, points=args.point or None, boxes=args.box)[None]
  return write_outputs(args.out, stem, image, *_text_answer(args, logits, 0.0))


def _text_model_dir(args) -> str:
  """RUN/model of --workdir, after the checks of a text prompt (the same for one image or many)."""
  if not args.text or not args.text.strip():
    raise UsageError("--workdir needs a non-empty --text \"...\" (the referring expression)")
  if args.point or args.box is not None or args.multimask:
    raise UsageError("--point/--box/--multimask are for SAM weights (--weights); text models take --text")
  model_dir = os.path.join(args.workdir, "model")
  if not os.path.isdir(model_dir):
    raise UsageError(f"{model_dir} not found: train first (python -m jaxris.train --config ... --workdir {args.workdir})")
  return model_dir


def _text_answerer(args, model_dir: str) -> Callable[[np.ndarray], "Answer"]:
  """Loads the trained text model in `model_dir` once: image -> its answer to --text. A bridge with a
  no-target head adds its verdict ("no_target": bool) to the answer's extra fields."""
  threshold = read_recipe(model_dir)["threshold"]
  predictor = load_text_predictor(model_dir)[1]

  def answer(image):
    logits, no_target = predictor.predict_with_target(image, args.text)
    logits, scores, extra = _text_answer(args, logits[None], threshold)
    if no_target is not None:  # a bridge with a no-target head
      extra["no_target"] = no_target
    return logits, scores, extra
  return answer


def _no_target_message(path: str, text: str) -> str:
  return f"no target: nothing in {path} fits {text!r} (the no-target head); the mask is empty"


def _run_text(args, image, stem) -> dict:
  logits, scores, extra = _text_answerer(args, _text_model_dir(args))(image)
  if extra.get("no_target"):
    print(_no_target_message(args.image, args.text))
  return write_outputs(args.out, stem, image, logits, scores, extra=extra)


def _run_sam(args, image, stem) -> dict:
  if not args.point and args.box is None:
    raise UsageError("give at least one prompt: --point X,Y[,LABEL] or --box X0,Y0,X1,Y1")
  predictor = SamPredictor(sam_weights.load(args.weights))
  predictor.set_image(image)
  kwargs = {}
  if args.point:
    kwargs["point_coords"] = np.array([p[:2] for p in args.point], np.float32)
    kwargs["point_labels"] = np.array([p[2] for p in args.point], np.int32)
  if args.box is not None:
    kwargs["box"] = np.array(args.box, np.float32)
  logits, scores, _ = predictor.predict(multimask_output=args.multimask, return_logits=True, **kwargs)
  return write_outputs(args.out, stem, image, logits, scores)


def main(argv=None) -> int:
  try:
    args = build_parser().parse_args(argv)
    images = input_images(args)
    if args.image_dir is not None or len(images) > 1:
      return run_many(args, images)
    args.image = images[0]  # one image: the single-image path, its outputs and exit codes
    paths = run(args)
  except (UsageError, ImageError, FileNotFoundError, ValueError) as e:
    print(f"jaxris.predict: error: {e}".splitlines()[0], file=sys.stderr)
    return 2
  for p in paths.values():
    print(p)
  return 0


# --- Many images: load the model once, encode each image once, report and skip the inputs that fail.

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
EXIT_SOME_FAILED = 1


def input_images(args) -> list[str]:
  """The --image files, then the image files of --image-dir (sorted), without repeats."""
  paths = list(args.image)
  if args.image_dir is not None:
    if not os.path.isdir(args.image_dir):
      raise UsageError(f"--image-dir {args.image_dir} is not a directory")
    found = sorted(os.path.join(args.image_dir, n) for n in os.listdir(args.image_dir)
                   if n.lower().endswith(IMAGE_SUFFIXES) and os.path.isfile(os.path.join(args.image_dir, n)))
    if not found:
      raise UsageError(f"no image files ({' '.join(IMAGE_SUFFIXES)}) in {args.image_dir}")
    paths += found
  if not paths:
    raise UsageError("give an image: --image FILE (repeatable) or --image-dir DIR")
  if args.batch_size < 1:
    raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
  return list(dict.fromkeys(paths))


Answer = tuple  # (logits float32 [K, H, W], scores [K], extra dict for scores.json)


def batch_predictor(args) -> tuple[Callable[[list[np.ndarray]], list[Answer]], int]:
  """Checks the prompts against the model (the single-image messages) and loads it once: returns
  (predict(images) -> one answer per image, how many images to pass at a time)."""
  if args.workdir is not None:
    answer = _text_answerer(args, _text_model_dir(args))
    return (lambda images: [answer(images[0])]), 1
  if weights_family(args.weights) == evf_sam.FAMILY:
    _check_evf_args(args)
    evf = EvfPredictor(args.weights)
    if args.point or args.box is not None:  # SAM prompts join the text: one image at a time
      return (lambda images: [_text_answer(args, evf.predict(images[0], args.text, points=args.point or None,
                                                               boxes=args.box)[None], 0.0)]), 1
    return (lambda images: [_text_answer(args, logits, 0.0)
                            for logits in evf.predict_batch(images, [[args.text]] * len(images))]), args.batch_size
  if args.text is not None:
    raise UsageError("--text needs --workdir (a trained text-prompted model) or EVF-SAM --weights; "
                     f"{args.weights} holds plain SAM")
  if not args.point and args.box is None:
    raise UsageError("give at least one prompt: --point X,Y[,LABEL] or --box X0,Y0,X1,Y1")
  sam = SamPredictor(sam_weights.load(args.weights))
  kwargs = {}
  if args.point:
    kwargs["point_coords"] = np.array([p[:2] for p in args.point], np.float32)
    kwargs["point_labels"] = np.array([p[2] for p in args.point], np.int32)
  if args.box is not None:
    kwargs["box"] = np.array(args.box, np.float32)

  def predict_sam(images):
    sam.set_image(images[0])  # the image encoder runs once per image
    logits, scores, _ = sam.predict(multimask_output=args.multimask, return_logits=True, **kwargs)
    return [(logits, scores, None)]
  return predict_sam, 1


def _text_answer(args, logits: np.ndarray, threshold: float) -> Answer:
  area = float((logits[0] > 0).mean())
  return logits, np.array([1.0]), {"text": args.text, "threshold": threshold, "mask_area_fraction": area}


def run_many(args, images: list[str]) -> int:
  """Predicts every image in `images`; returns the exit code (0, or EXIT_SOME_FAILED)."""
  from tqdm import tqdm

  predict, batch_size = batch_predictor(args)
  written, failed, stems, no_target = {}, {}, {}, []
  pending: list[tuple[str, str, np.ndarray]] = []

  def fail(path, message):
    failed[path] = message
    tqdm.write(f"jaxris.predict: error: {path}: {message}".splitlines()[0], file=sys.stderr)

  def flush():
    if not pending:
      return
    try:
      answers = predict([image for _, _, image in pending])
    except (ValueError, RuntimeError) as e:  # the model refused the batch: every image in it failed
      for path, _, _ in pending:
        fail(path, f"{type(e).__name__}: {e}")
    else:
      for (path, stem, image), (logits, scores, extra) in zip(pending, answers):
        written[path] = write_outputs(args.out, stem, image, logits, scores, extra)["mask.png"]
        if extra and extra.get("no_target"):
          no_target.append(path)
          tqdm.write(_no_target_message(path, args.text), file=sys.stdout)
    bar.update(len(pending))
    pending.clear()

  with tqdm(total=len(images), desc="predict", unit="image", file=sys.stderr, dynamic_ncols=True) as bar:
    for path in images:
      stem = os.path.splitext(os.path.basename(path))[0]
      try:
        if stem in stems:
          raise UsageError(f"its outputs would overwrite those of {stems[stem]} (same name {stem!r})")
        image = read_image(path)
        _check_inside(args, image.shape[0], image.shape[1])
      except (UsageError, ImageError) as e:
        fail(path, str(e))
        bar.update(1)
        continue
      stems[stem] = path
      pending.append((path, stem, image))
      if len(pending) >= batch_size:
        flush()
    flush()

  os.makedirs(args.out, exist_ok=True)
  summary = os.path.join(args.out, "summary.json")
  with open(summary, "w") as f:
    json.dump({"images": len(images), "written": written, "failed": failed, "no_target": no_target}, f, indent=2)
  said_none = f", {len(no_target)} with no target (the no-target head)" if no_target else ""
  print(f"jaxris.predict: {len(images)} images: {len(written)} written to {args.out}{said_none}, {len(failed)} failed"
        f"{' (listed above and in ' + summary + ')' if failed else ''}")
  return EXIT_SOME_FAILED if failed else 0


if __name__ == "__main__":
  sys.exit(main())
