"""Interactive demo in the browser: upload a photo, click points, draw a box, type a phrase, see the mask.

  python -m jaxris.demo --weights weights/mobile_sam       # SAM / MobileSAM: points and boxes
  python -m jaxris.demo --weights weights/evf_sam          # EVF-SAM: a phrase, optionally with points / a box
  python -m jaxris.demo --workdir runs/ldit_refshapes      # a model trained by jaxris.train: a phrase

Then open http://127.0.0.1:7860. Clicks add a positive or a negative point, or (mode "box corner")
two clicks make a box; Enter in the text box or "Segment" answers the phrase. The output is the mask
over the image (points green / red, the box in yellow), the mask as a PNG and the model's score
(SAM: its predicted IoU; text models: the mean mask probability; a SAM+CLIP bridge trained with its
no-target head says "No target" when the head finds nothing that fits). Each uploaded image is encoded
once: later SAM prompts reuse its cached image embedding. Needs the [demo] extra
(pip install "jaxris[demo]"). It listens on 127.0.0.1 unless --host says otherwise, creates a public
link only with --share, and refuses uploads over --max-upload-mb. Bad arguments or weights give one
line and exit code 2.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import hashlib
import importlib.util
import math
import os
import sys
import threading
import time

import numpy as np
from PIL import Image, ImageDraw

from jaxris.data.image_io import ImageError, read_image
from jaxris.inference.sam_predictor import SamPredictor
from jaxris.inference.text_predictors import is_text_model, load_text_predictor
from jaxris.visualize import overlay
from jaxris.weights import sam as sam_weights

MAX_PIXELS = 25_000_000      # larger decoded images are refused with a message
MAX_UPLOAD_MB = 20           # default upload limit (--max-upload-mb)
MODES = ("positive point", "negative point", "box corner")


# --- What each model takes (a table, not a chain of ifs).

@dataclasses.dataclass(frozen=True)
class Capabilities:
  name: str          # shown to the user
  text: bool         # takes a phrase
  needs_text: bool   # cannot answer without one
  points: bool
  box: bool


CAPABILITIES = {
    "sam": Capabilities("SAM (points and boxes)", text=False, needs_text=False, points=True, box=True),
    "evf": Capabilities("EVF-SAM (a phrase, optionally with points and a box)", text=True, needs_text=True,
                        points=True, box=True),
    "dit": Capabilities("DIT-SAM (a phrase)", text=True, needs_text=True, points=False, box=False),
    "bridge": Capabilities("SAM+CLIP bridge (a phrase)", text=True, needs_text=True, points=False, box=False),
}


# --- The prompts of one image, and what a click does to them.

@dataclasses.dataclass(frozen=True)
class Prompts:
  points: tuple = ()                  # (x, y, label): label 1 foreground, 0 background
  box: tuple | None = None            # (x0, y0, x1, y1)
  corner: tuple | None = None         # the first corner of a box being drawn

  @property
  def empty(self) -> bool:
    return not self.points and self.box is None


def add_click(prompts: Prompts, mode: str, x: float, y: float) -> Prompts:
  """The prompts after a click at pixel (x, y) in `mode` (one of MODES); two box-corner clicks make a box."""
  if mode == "positive point":
    return dataclasses.replace(prompts, points=prompts.points + ((float(x), float(y), 1),))
  if mode == "negative point":
    return dataclasses.replace(prompts, points=prompts.points + ((float(x), float(y), 0),))
  if mode != "box corner":
    raise ValueError(f"unknown click mode {mode!r}; choose from {MODES}")
  if prompts.corner is None:
    return dataclasses.replace(prompts, corner=(float(x), float(y)))
  (ax, ay), (bx, by) = prompts.corner, (float(x), float(y))
  if ax == bx or ay == by:  # a degenerate box: keep waiting for a proper second corner
    return prompts
  return dataclasses.replace(prompts, box=(min(ax, bx), min(ay, by), max(ax, bx), max(ay, by)), corner=None)


def request_error(caps: Capabilities, prompts: Prompts, text: str) -> str | None:
  """Why this model cannot answer these prompts (a message for the user), or None when it can."""
  text = (text or "").strip()
  if text and not caps.text:
    return f"This model ({caps.name}) does not take text: clear the text box and click points or draw a box."
  if not caps.points and prompts.points:
    return f"This model ({caps.name}) does not take points: clear the prompts and type a phrase."
  if not caps.box and (prompts.box is not None or prompts.corner is not None):
    return f"This model ({caps.name}) does not take a box: clear the prompts and type a phrase."
  if caps.needs_text and not text:
    return f"Type a phrase: this model ({caps.name}) answers text."
  if not text and prompts.empty:
    return "Click a point on the image (or two box corners) to segment."
  return None


def check_image(image: np.ndarray) -> str | None:
  """A message for an image the demo refuses, or None."""
  if image.shape[0] * image.shape[1] > MAX_PIXELS:
    return (f"The image is {image.shape[1]}x{image.shape[0]} pixels; this demo takes at most "
            f"{MAX_PIXELS / 1e6:.0f} megapixels. Resize it first.")
  return None


def load_image(path: str | None) -> tuple[np.ndarray | None, str | None]:
  """(uint8 RGB image, None) or (None, a one-line message) for an uploaded file."""
  if not path:
    return None, "Upload an image first."
  try:
    image = read_image(path)
  except ImageError as e:
    return None, f"Cannot use this file as an image: {str(e).splitlines()[0]}"
  message = check_image(image)
  return (None, message) if message else (image, None)


def draw_prompts(image: np.ndarray, prompts: Prompts) -> np.ndarray:
  """A copy of `image` with the points (green / red dots), the box and a pending corner (yellow) drawn."""
  out = Image.fromarray(image)
  draw = ImageDraw.Draw(out)
  r = max(3, round(min(image.shape[:2]) / 100))
  for x, y, label in prompts.points:
    draw.ellipse((x - r, y - r, x + r, y + r), fill=(0, 220, 0) if label else (230, 0, 0), outline=(255, 255, 255))
  if prompts.box is not None:
    draw.rectangle(prompts.box, outline=(255, 215, 0), width=max(2, r // 2))
  if prompts.corner is not None:
    x, y = prompts.corner
    draw.line((x - 2 * r, y, x + 2 * r, y), fill=(255, 215, 0), width=2)
    draw.line((x, y - 2 * r, x, y + 2 * r), fill=(255, 215, 0), width=2)
  return np.asarray(out)


# --- A loaded model answering prompts, with the image embeddings cached.

@dataclasses.dataclass
class Answer:
  mask: np.ndarray        # bool [H, W]
  score: float
  score_name: str
  seconds: float
  no_target: bool = False  # a bridge's no-target head said that nothing in the image fits the phrase


def image_key(image: np.ndarray) -> str:
  return hashlib.sha1(np.ascontiguousarray(image).tobytes() + str(image.shape).encode()).hexdigest()


class Segmenter:
  """One model (kind 'sam', 'evf', 'dit' or 'bridge') behind a lock. SAM keeps the embeddings of the last
  `cache_size` images and reuses them for later prompts (`encodes` counts the image-encoder runs).
  EvfPredictor keeps the SAM embeddings of its last images itself (only BEiT-3 and the decoder run
  for a new phrase on the same image); DIT runs its whole model per request, since its text enters
  the image encoder (nothing text-free to cache); so does the bridge, whose no-target head may
  answer that nothing fits the phrase."""

  def __init__(self, kind: str, predictor, cache_size: int = 8):
    self.kind, self.predictor, self.caps = kind, predictor, CAPABILITIES[kind]
    self._cache: collections.OrderedDict[str, tuple] = collections.OrderedDict()
    self._cache_size = cache_size
    self._lock = threading.Lock()
    self.encodes = 0

  def encode(self, image: np.ndarray) -> str:
    """Encodes `image` if it is not cached (SAM only; others need nothing); returns its key."""
    key = image_key(image)
    if self.kind == "sam":
      with self._lock:
        self._sam_features(key, image)
    return key

  def _sam_features(self, key: str, image: np.ndarray) -> None:
    """Puts `image`'s embedding into the predictor, from the cache or by encoding it (lock held)."""
    p = self.predictor
    if key in self._cache:
      self._cache.move_to_end(key)
      p.features, p.original_size, p.input_size = self._cache[key]
      return
    p.set_image(image)
    self.encodes += 1
    self._cache[key] = (p.features, p.original_size, p.input_size)
    while len(self._cache) > self._cache_size:
      self._cache.popitem(last=False)

  def answer(self, image: np.ndarray, prompts: Prompts, text: str = "") -> Answer:
    """The mask for these prompts. Call request_error first: this raises on what it would refuse."""
    error = request_error(self.caps, prompts, text)
    if error:
      raise ValueError(error)
    start = time.perf_counter()
    text = (text or "").strip()
    points = np.array(prompts.points, np.float32).reshape(-1, 3) if prompts.points else None
    with self._lock:
      if self.kind == "sam":
        self._sam_features(image_key(image), image)
        kwargs = {}
        if points is not None:
          kwargs.update(point_coords=points[:, :2], point_labels=points[:, 2].astype(np.int32))
        if prompts.box is not None:
          kwargs["box"] = np.array(prompts.box, np.float32)
        # What python -m jaxris.predict --weights DIR --point ... computes: one mask, logits > 0.
        logits, scores, _ = self.predictor.predict(multimask_output=False, return_logits=True, **kwargs)
        best = int(np.argmax(scores))
        return Answer(logits[best] > 0, float(scores[best]), "predicted IoU", time.perf_counter() - start)
      extra = dict(points=points, boxes=prompts.box) if self.kind == "evf" else {}  # EVF-SAM also takes prompts
      logits, said = self.predictor.predict_with_target(image, text, **extra)
      no_target = bool(said)  # None: a model without a no-target head
    mask = logits > 0
    # The logits are shifted by the recipe's threshold (`cut`); undo it for probabilities.
    prob = 1.0 / (1.0 + np.exp(-(logits[mask].astype(np.float64) + self.predictor.cut)))
    return Answer(mask, float(prob.mean()) if mask.any() else 0.0, "mean mask probability",
                  time.perf_counter() - start, no_target)


def describe_prompts(prompts: Prompts, text: str = "") -> str:
  """'points 250,150 (+), 30,40 (-); box 1,2,300,400; text "the zebra"' -- what the model was asked."""
  parts = []
  if prompts.points:
    parts.append("points " + ", ".join(f"{x:g},{y:g} ({'+' if label else '-'})" for x, y, label in prompts.points))
  if prompts.box is not None:
    parts.append("box " + ",".join(f"{v:g}" for v in prompts.box))
  if (text or "").strip():
    parts.append(f'text "{text.strip()}"')
  return "; ".join(parts)


def describe(answer: Answer, prompts: Prompts, text: str = "") -> str:
  """The status line of an answer: score, mask area, the prompts and the time taken."""
  asked = describe_prompts(prompts, text)
  if answer.no_target:
    return (f"No target: the model's no-target head says nothing in this image fits {asked} "
            f"({answer.seconds:.2f} s).")
  if not answer.mask.any():
    return (f"Empty mask ({answer.score_name} {answer.score:.3f}): the model found nothing for {asked}. "
            "Try other prompts.")
  return (f"{answer.score_name}: {answer.score:.3f} · mask covers {100.0 * answer.mask.mean():.1f}% of the image "
          f"· {asked} · {answer.seconds:.2f} s")


# --- Loading a model from the command line's arguments.

class UsageError(Exception):
  """Bad arguments or weights: one line, exit code 2."""


def load_segmenter(weights: str | None = None, workdir: str | None = None) -> Segmenter:
  """A Segmenter for converted --weights (SAM / MobileSAM / EVF-SAM) or a jaxris.train --workdir."""
  if workdir is not None:
    model_dir = os.path.join(workdir, "model")
    if not os.path.isdir(model_dir):
      raise UsageError(f"{model_dir} not found: train first (python -m jaxris.train --config ... --workdir {workdir})")
    directory = model_dir
  else:
    directory = weights
    if not os.path.isdir(directory):
      raise UsageError(f"weights directory {directory} not found: convert official weights first "
                       "(python -m jaxris.convert.sam --src X.pth --out DIR, or python -m jaxris.weights.fetch "
                       "mobile_sam --out DIR)")
  try:
    if is_text_model(directory):
      return Segmenter(*load_text_predictor(directory))
    return Segmenter("sam", SamPredictor(sam_weights.load(directory)))
  except Exception as e:  # a broken directory: name it, on one line, instead of a traceback
    raise UsageError(f"cannot load weights from {directory}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None


# --- The Gradio app (wiring only; the logic is above).

def build_app(segmenter: Segmenter):
  import gradio as gr

  caps = segmenter.caps
  placeholder = "e.g. the zebra on the left" if caps.text else "this model takes no text"

  def outputs(image, prompts, answer=None):
    shown = image if answer is None else overlay(image, answer.mask)
    mask_png = None if answer is None else (answer.mask * 255).astype(np.uint8)
    return draw_prompts(shown, prompts), mask_png

  def on_upload(path):
    image, message = load_image(path)
    if image is None:
      return None, Prompts(), None, None, message
    start = time.perf_counter()
    segmenter.encode(image)
    done = f"Image {image.shape[1]}x{image.shape[0]} ready"
    if segmenter.kind == "sam":
      done += f" (encoded in {time.perf_counter() - start:.1f} s; later prompts reuse it)"
    hint = "type a phrase and press Enter" if caps.needs_text else "click a point on the image"
    return image, Prompts(), None, None, f"{done}: {hint}."

  def segment(image, prompts, text):
    if image is None:
      return prompts, None, None, "Upload an image first."
    error = request_error(caps, prompts, text)
    if error:
      return (prompts, *outputs(image, prompts), error)
    answer = segmenter.answer(image, prompts, text)
    return (prompts, *outputs(image, prompts, answer), describe(answer, prompts, text))

  def on_click(image, prompts, mode, text, evt: gr.SelectData):
    if image is None:
      return prompts, None, None, "Upload an image first."
    x, y = evt.index[0], evt.index[1]
    if mode != "box corner" and not caps.points or mode == "box corner" and not caps.box:
      return (prompts, *outputs(image, prompts), request_error(caps, add_click(prompts, mode, x, y), text))
    prompts = add_click(prompts, mode, x, y)
    if prompts.corner is not None:
      return (prompts, *outputs(image, prompts), f"Box corner at {x},{y}: click the opposite corner.")
    return segment(image, prompts, text)

  on_click.__annotations__["evt"] = gr.SelectData  # resolved here: gradio reads it to pass the click

  def on_clear(image):
    if image is None:
      return Prompts(), None, None, "Upload an image first."
    return (Prompts(), *outputs(image, Prompts()), "Prompts cleared.")

  theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],  # no web fonts: works offline
                            font_mono=["ui-monospace", "monospace"])
  with gr.Blocks(title="jaxris demo", analytics_enabled=False) as app:
    app.jaxris_theme = theme
    gr.Markdown(f"## jaxris: {caps.name}\nUpload an image, then click on it"
                + (" or type a phrase." if caps.text else "."))
    image_state = gr.State(None)
    prompts_state = gr.State(Prompts())
    with gr.Row():
      with gr.Column():
        upload = gr.Image(label="Image (click to prompt)", type="filepath", sources=["upload"], format="png",
                          image_mode=None, elem_id="input_image")  # the uploaded file as it is
        mode = gr.Radio(list(MODES), value=MODES[0], label="A click adds", elem_id="mode",
                        interactive=caps.points or caps.box)
        text = gr.Textbox(label="Phrase", placeholder=placeholder, elem_id="text", interactive=caps.text)
        with gr.Row():
          run = gr.Button("Segment", variant="primary", elem_id="segment")
          clear = gr.Button("Clear prompts", elem_id="clear")
      with gr.Column():
        shown = gr.Image(label="Mask", type="numpy", format="png", interactive=False, elem_id="overlay")
        mask = gr.Image(label="Mask (PNG, 0/255)", type="numpy", format="png", interactive=False,
                        image_mode="L", height=240, elem_id="mask")
        status = gr.Textbox(label="Status", interactive=False, elem_id="status",
                            value="Upload an image to start.")
    upload.upload(on_upload, [upload], [image_state, prompts_state, shown, mask, status])
    upload.clear(lambda: (None, Prompts(), None, None, "Upload an image to start."), None,
                 [image_state, prompts_state, shown, mask, status])
    upload.select(on_click, [image_state, prompts_state, mode, text], [prompts_state, shown, mask, status])
    text.submit(segment, [image_state, prompts_state, text], [prompts_state, shown, mask, status])
    run.click(segment, [image_state, prompts_state, text], [prompts_state, shown, mask, status])
    clear.click(on_clear, [image_state], [prompts_state, shown, mask, status])
  return app


# --- Command line.

class _Parser(argparse.ArgumentParser):
  def error(self, message):  # one line instead of usage + message
    raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
  p = _Parser(prog="python -m jaxris.demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument("--weights", help="converted SAM / MobileSAM / EVF-SAM weights directory")
  src.add_argument("--workdir", help="a jaxris.train output directory (its model/ answers phrases)")
  p.add_argument("--port", type=int, default=7860, help="port to listen on (default 7860)")
  p.add_argument("--host", default="127.0.0.1",
                 help="address to listen on (default 127.0.0.1, this machine only; 0.0.0.0 for the network)")
  p.add_argument("--share", action="store_true", help="also create a public gradio.live link (off by default)")
  p.add_argument("--max-upload-mb", type=float, default=MAX_UPLOAD_MB,
                 help=f"refuse uploads larger than this (default {MAX_UPLOAD_MB} MB)")
  return p


def main(argv=None) -> int:
  try:
    args = build_parser().parse_args(argv)
    if not 0 < args.port < 65536:
      raise UsageError(f"--port {args.port} is not a TCP port (1-65535)")
    if importlib.util.find_spec("gradio") is None:
      raise UsageError("gradio is not installed: pip install \"jaxris[demo]\"")
    segmenter = load_segmenter(args.weights, args.workdir)
  except UsageError as e:
    print(f"jaxris.demo: error: {e}".splitlines()[0], file=sys.stderr)
    return 2
  os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no telemetry or version checks
  app = build_app(segmenter)
  print(f"jaxris.demo: {segmenter.caps.name} on http://{args.host}:{args.port}", flush=True)
  app.queue().launch(server_name=args.host, server_port=args.port, share=args.share, show_error=True,
                     max_file_size=f"{math.ceil(args.max_upload_mb * 1024)}kb", ssr_mode=False,
                     theme=app.jaxris_theme, footer_links=[])
  return 0


if __name__ == "__main__":
  sys.exit(main())
