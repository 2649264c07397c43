"""RefShapes pixels: the image and exact masks of a scene, examples as dicts, contact sheets.

Appearance: each shape's colour gets a hue/saturation/brightness jitter and a brightness
gradient ("texture"), the background is a smooth, low-saturation, randomly tinted field, and
per-pixel Gaussian noise covers everything, so a fixed colour threshold is not enough and
nothing is pixel-perfect. It is drawn from its own random stream: noise and texture settings
never change the scene. A mask is the set of pixels whose centres lie inside the shape.

Examples have the RefCOCO reader's format: `image` uint8 HxWx3, `mask` uint8 HxW in {0,1},
`sentences` list of str, `ref_id` and `image_id` (split code * 10**7 + index, unique across
splits), `bbox` [x, y, w, h] of the mask in pixels, `category_ids` [kind index into KINDS],
`ann_ids` [index of the target in the scene's shape list].

No-target splits (opt-in, for models with a no-target head; `NO_TARGET_SPLITS`): example i of
"<split>_nt" is example i of <split> (same image, same expressions), except that a fraction
`RefShapesConfig.no_target_fraction` of them become no-target examples: the expression names a
(colour, kind) that is not drawn ("the purple star" where there is none), the mask is empty,
`no_target` is True, `category_ids` and `ann_ids` are empty and `bbox` is zeros. The choice and
the wording come from a third random stream of the base example, so the base splits are unchanged.
"""

import colorsys
import math
from collections.abc import Sequence
from typing import Iterator

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from jaxris.data.refshapes.scene import (ALL_COMBOS, BOUND, KINDS, OUTLINES, SEEN, SPLITS, example_id,
                                         random_stream, scene, split_size)

NO_TARGET_SUFFIX = "_nt"
NO_TARGET_SPLITS = tuple(s + NO_TARGET_SUFFIX for s in SPLITS)

# Hue (degrees) of each colour name; wide gaps so the jitter below never crosses a name.
_HUES = {"red": 0.0, "orange": 28.0, "yellow": 56.0, "green": 125.0, "blue": 220.0,
         "purple": 275.0}
_HUE_JITTER = 5.0          # degrees, uniform +-
_SAT_RANGE = (0.7, 1.0)
_VAL_RANGE = (0.8, 1.0)     # darker orange would read as brown


def _inside_polygon(px, py, poly):
  """Even-odd rule at pixel centres; works for the non-convex star too."""
  inside = np.zeros(px.shape, bool)
  for (x1, y1), (x2, y2) in zip(poly, np.roll(poly, -1, axis=0)):
    if y1 == y2:
      continue    # a horizontal edge is never crossed by a horizontal ray
    crosses = (y1 > py) != (y2 > py)
    x_at = x1 + (py - y1) * (x2 - x1) / (y2 - y1)
    inside ^= crosses & (px < x_at)
  return inside


def _shape_window(shape, image_size):
  """(y0, x0, boolean window) of the pixels whose centres lie inside the shape."""
  r = shape.size * BOUND[shape.kind]
  x0, y0 = max(0, int(shape.cx - r) - 1), max(0, int(shape.cy - r) - 1)
  x1, y1 = min(image_size, int(shape.cx + r) + 2), min(image_size, int(shape.cy + r) + 2)
  py, px = np.mgrid[y0:y1, x0:x1] + 0.5
  outline = OUTLINES[shape.kind]
  if outline is None:
    return y0, x0, (px - shape.cx) ** 2 + (py - shape.cy) ** 2 <= shape.size ** 2
  a = math.radians(shape.angle)
  rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
  poly = outline @ rot.T * shape.size + (shape.cx, shape.cy)
  return y0, x0, _inside_polygon(px, py, poly)


def shape_mask(shape, image_size):
  """Boolean HxW mask of the pixels whose centres lie inside the shape."""
  y0, x0, window = _shape_window(shape, image_size)
  mask = np.zeros((image_size, image_size), bool)
  mask[y0:y0 + window.shape[0], x0:x0 + window.shape[1]] = window
  return mask


def _hsv(h, s, v):
  return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), np.float32)


def _background(config, rng):
  """Smooth random tint: a coarse low-saturation, darkish grid, bilinearly upsampled."""
  n = config.image_size
  hsv = np.stack([rng.random((5, 5)), rng.uniform(0, 0.25, (5, 5)),
                  rng.uniform(0.15, 0.5, (5, 5))], -1)
  coarse = Image.fromarray(np.round(hsv * 255).astype(np.uint8), "HSV").convert("RGB")
  return np.asarray(coarse.resize((n, n), Image.BILINEAR), np.float32) / 255


def _render(config, split, index, shapes):
  """Image (uint8) and the per-shape masks. Appearance has its own random stream, so
  noise/texture settings never change the scene."""
  rng = random_stream(config, split, index, stream=1)
  n = config.image_size
  image = _background(config, rng)
  masks = []
  for shape in shapes:
    hue = (_HUES[shape.colour] + rng.uniform(-1, 1) * _HUE_JITTER) / 360
    colour = _hsv(hue, rng.uniform(*_SAT_RANGE), rng.uniform(*_VAL_RANGE))
    direction = rng.uniform(0, 2 * math.pi)
    mask = shape_mask(shape, n)
    ys, xs = np.nonzero(mask)
    # Brightness ramps by +-texture across the shape's extent in a random direction.
    r = shape.size * BOUND[shape.kind]
    ramp = ((xs + 0.5 - shape.cx) * math.cos(direction)
            + (ys + 0.5 - shape.cy) * math.sin(direction)) / r
    shade = (1 + config.texture * ramp).astype(np.float32)
    image[ys, xs] = np.minimum(colour * shade[:, None], 1)
    masks.append(mask)
  image *= 255
  if config.noise > 0:
    image += config.noise * rng.standard_normal(image.shape, np.float32)
  return np.clip(np.rint(image), 0, 255).astype(np.uint8), masks


def _bbox(mask):
  ys, xs = np.nonzero(mask)
  return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
          float(ys.max() - ys.min() + 1)]


def _no_target(config, split, index, ex):
  """Example `index` of "<split>_nt" from the base example `ex` (see the module docstring)."""
  rng = random_stream(config, split, index, stream=2)
  if rng.random() >= config.no_target_fraction:
    return dict(ex, no_target=False)
  drawn = {(s.colour, s.kind) for s in scene(config, split, index).shapes}
  named = ALL_COMBOS if split == "testB" else SEEN  # testB's held-out pairs stay unseen elsewhere, in words too
  absent = [ck for ck in named if ck not in drawn]
  colour, kind = absent[int(rng.integers(len(absent)))]
  return dict(ex, mask=np.zeros_like(ex["mask"]), sentences=[f"the {colour} {kind}"], bbox=[0.0, 0.0, 0.0, 0.0],
              category_ids=[], ann_ids=[], no_target=True)


def example(config, split, index):
  """Example `index` of `split` as a RefCOCO-style dict (see the module docstring)."""
  if split.endswith(NO_TARGET_SUFFIX) and split[:-len(NO_TARGET_SUFFIX)] in SPLITS:
    base = split[:-len(NO_TARGET_SUFFIX)]
    return _no_target(config, base, index, example(config, base, index))
  sc = scene(config, split, index)
  image, masks = _render(config, split, index, sc.shapes)
  mask = masks[sc.target]
  ident = example_id(split, index)
  return {
      "image": image,
      "mask": mask.astype(np.uint8),
      "sentences": list(sc.sentences),
      "ref_id": ident,
      "image_id": ident,
      "bbox": _bbox(mask),
      "category_ids": [KINDS.index(sc.shapes[sc.target].kind)],
      "ann_ids": [sc.target],
  }


def examples(config, split, start=0, stop=None) -> Iterator[dict]:
  """Examples start..stop-1 of `split` (stop defaults to the split's size)."""
  if stop is None:
    base = split[:-len(NO_TARGET_SUFFIX)] if split in NO_TARGET_SPLITS else split
    stop = split_size(config, base)
  for index in range(start, stop):
    yield example(config, split, index)


class LazyExamples(Sequence):
  """All examples of `split` as a sequence that renders each one when first read, then keeps it.

  A training run reads its examples through the loader's threads: rendering them there, as they are
  drawn, lets the first step start without rendering the whole split first (the 6000 train scenes of
  README command 1 take about half a minute), and a short run renders only what it reads. Example i is a
  pure function of (config, split, i), so two threads racing on one index keep equal copies.
  """

  valid_by_construction = True  # every example has an image, a mask and sentences (the loader's check)

  def __init__(self, config, split):
    base = split[:-len(NO_TARGET_SUFFIX)] if split in NO_TARGET_SPLITS else split
    self.config, self.split, self._size = config, split, split_size(config, base)
    self._kept = {}

  def __len__(self):
    return self._size

  def __getitem__(self, index):
    if isinstance(index, slice):
      return [self[i] for i in range(*index.indices(self._size))]
    index = int(index)
    if index < 0:
      index += self._size
    if not 0 <= index < self._size:
      raise IndexError(f"{self.split} has {self._size} examples, not index {index}")
    ex = self._kept.get(index)
    if ex is None:
      ex = self._kept[index] = example(self.config, self.split, index)
    return ex



# ---------------------------------------------------------------- contact sheet

def _outline(mask):
  inner = mask.copy()
  inner[1:-1, 1:-1] = (mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1]
                       & mask[1:-1, :-2] & mask[1:-1, 2:])
  return mask & ~inner


def _dilate(mask):
  out = mask.copy()
  out[1:] |= mask[:-1]
  out[:-1] |= mask[1:]
  out[:, 1:] |= mask[:, :-1]
  out[:, :-1] |= mask[:, 1:]
  return out


def _wrap(text, width):
  lines, line = [], ""
  for word in text.split():
    if line and len(line) + 1 + len(word) > width:
      lines.append(line)
      line = word
    else:
      line = f"{line} {word}".strip()
  return lines + [line]


def contact_sheet(config, split, start=0, count=16, columns=4, scale=2):
  """A PIL image: each example upscaled, the target mask outlined, expressions below."""
  font = ImageFont.load_default(size=11)
  tile = config.image_size * scale
  text_lines = 8
  cell_h = tile + 14 * text_lines + 6
  rows = max(1, -(-count // columns))
  sheet = Image.new("RGB", (columns * (tile + 8), rows * cell_h), "white")
  draw = ImageDraw.Draw(sheet)
  for k, ex in enumerate(examples(config, split, start, start + count)):
    big = np.repeat(np.repeat(ex["image"], scale, 0), scale, 1).copy()
    mask = np.repeat(np.repeat(ex["mask"] > 0, scale, 0), scale, 1)
    big[_outline(mask) | (_dilate(mask) & ~mask)] = 255   # a 2px line on the boundary
    x, y = (k % columns) * (tile + 8) + 4, (k // columns) * cell_h + 4
    sheet.paste(Image.fromarray(big), (x, y))
    lines = [f"{split}[{start + k}]"]
    for i, sentence in enumerate(ex["sentences"]):
      lines += [("  " if j else f"{i + 1}. ") + part
                for j, part in enumerate(_wrap(sentence, tile // 7))]
    for j, line in enumerate(lines[:text_lines]):
      draw.text((x, y + tile + 2 + 14 * j), line, fill="black", font=font)
  return sheet
