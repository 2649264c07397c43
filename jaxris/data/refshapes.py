"""RefShapes: a synthetic referring-segmentation dataset that needs no download.

Each example is an image of a few flat shapes on a textured background, one of which
is the *target*, plus 1-3 English expressions that pick out exactly that shape, and
its exact pixel mask. It is the default dataset of `python -m jaxris.train`: a small
model learns it on a laptop CPU in minutes, yet it cannot be solved without reading
the text, because the target nearly always shares its kind or its colour with another
shape in the image.

Scenes
  3-6 shapes (configurable) of 5 kinds x 6 colours, two size classes ("big" shapes have
  at least 1.9x the area of "small" ones) and equal area for equal size whatever the
  kind. Shapes never overlap (their bounding circles are kept apart), so a mask is
  exactly the pixels of its shape as drawn. Colours get a per-shape hue/saturation/
  brightness jitter, a brightness gradient ("texture") and per-pixel Gaussian noise, on a
  smooth, low-saturation, randomly tinted background, so a fixed colour threshold is not
  enough and nothing is pixel-perfect.

Expressions (four families; every one is checked to fit exactly one shape of the scene,
and "clearly": positions differ by at least `margin` x image_size, sizes compared by a
superlative by at least 25% in area)
  attribute     "the red circle", "the big blue shape", "the small star"
  superlative   "the smallest red shape", "the largest triangle"
  position      "the leftmost circle", "the top star", "the second square from the right"
  relation      "the blue triangle left of the big circle", "the square above the green star"
  A noun phrase (NP) is `[big|large|small|little] [colour] (kind|shape)`; "big"/"small"
  name the size class. Superlatives use only colour/kind. Ordinals count shapes that
  match the NP along one axis by their centres. "left of"/"right of"/"above"/"below"
  compare centres along that axis: the target lies on the named side of the landmark
  (offset along the axis >= margin and >= half the offset across it, so "above" never
  means "far to the upper right") and every other shape matching the target NP lies
  clearly on the other side. The landmark NP is itself unique in the image, and the
  target NP matches at least two shapes besides the landmark (so the relation is needed).

Splits (mirroring RefCOCO's testA/testB naming in spirit: RefCOCO's testA holds
people, testB other objects; here testA is the training distribution made harder and
testB is a compositional split)
  train, val  same distribution, different random streams.
  testA       same colours/kinds as train, `testA_extra_shapes` more shapes per image
              (more distractors, more crowding).
  testB       the target's (colour, kind) is always one of `HELD_OUT`, six of the 30
              combinations (20%, one per colour): red triangle, orange circle, yellow star,
              green square, blue diamond, purple triangle. In train, val and testA these
              combinations are never drawn at all, neither as target nor as distractor or
              landmark; every colour and every kind on its own does occur there. In testB
              the other shapes may be any combination.

Determinism
  Example `i` of split `s` is a pure function of (config, s, i): its random streams are
  seeded with (seed, split, i), the scene (shapes, target, expressions) from one stream
  and the appearance (colour jitter, texture, noise) from another. Any process can thus
  generate any index without coordination; `shard_indices` gives each of N processes a
  contiguous, disjoint range.

Format (as the RefCOCO reader): `image` uint8 HxWx3, `mask` uint8 HxW in {0,1},
`sentences` list of str, `ref_id` and `image_id` (split code * 10**7 + index, unique
across splits), `bbox` [x, y, w, h] of the mask in pixels, `category_ids` [kind index
into KINDS], `ann_ids` [index of the target in the scene's shape list]. `scene()` gives
the underlying description (kinds, colours, sizes, centres) for inspection and tests.

  python -m jaxris.data.refshapes --out DIR --split val --count 16   # contact sheet PNG
"""

import argparse
import colorsys
import dataclasses
import itertools
import math
import os
from typing import Iterator

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SPLITS = ("train", "val", "testA", "testB")
KINDS = ("circle", "square", "triangle", "star", "diamond")
COLOURS = ("red", "orange", "yellow", "green", "blue", "purple")
# (colour, kind) pairs never drawn outside testB and always the target inside it. One per
# colour and the kinds spread out, so every colour and every kind is still seen in training.
HELD_OUT = frozenset({
    ("red", "triangle"), ("orange", "circle"), ("yellow", "star"),
    ("green", "square"), ("blue", "diamond"), ("purple", "triangle"),
})
SEEN = tuple((c, k) for c in COLOURS for k in KINDS if (c, k) not in HELD_OUT)
ALL_COMBOS = tuple((c, k) for c in COLOURS for k in KINDS)

_SPLIT_CODE = {"train": 0, "val": 1, "testA": 2, "testB": 3}
_ID_STRIDE = 10_000_000

# Hue (degrees) of each colour name; wide gaps so the jitter below never crosses a name.
_HUES = {"red": 0.0, "orange": 28.0, "yellow": 56.0, "green": 125.0, "blue": 220.0,
         "purple": 275.0}
_HUE_JITTER = 5.0          # degrees, uniform +-
_SAT_RANGE = (0.7, 1.0)
_VAL_RANGE = (0.8, 1.0)     # darker orange would read as brown

# Nominal size s (pixels) = radius of the equal-area circle, as a fraction of image_size.
_SIZE_BANDS = {False: (0.045, 0.065), True: (0.09, 0.115)}   # big -> band
_SIZE_WORDS = {True: ("big", "large"), False: ("small", "little")}
_SUPERLATIVE_AREA_RATIO = 1.25   # the extreme shape differs from the rest by >= 25% in area
_GAP = 0.02                      # min gap between bounding circles, fraction of image_size
_MAX_SCENE_TRIES = 200
_MAX_PLACE_TRIES = 200


def _star(points=5, inner=0.5):
  angles = -math.pi / 2 + np.arange(2 * points) * math.pi / points
  radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
  return np.stack([radii * np.cos(angles), radii * np.sin(angles)], 1)


def _unit_area(poly):
  x, y = poly[:, 0], poly[:, 1]
  return 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def _equal_area(poly):
  """Scales a polygon to area pi, the area of the unit circle (size s=1)."""
  return poly * math.sqrt(math.pi / _unit_area(poly))


# Outline of each kind at size 1, in image coordinates (y down), centred on the origin;
# None is the circle. Rotation jitter (degrees, uniform +-) keeps every kind recognisable:
# the square stays axis-aligned-ish, the diamond is a tall rhombus so it cannot be
# mistaken for a rotated square.
_OUTLINES = {
    "circle": None,
    "square": _equal_area(np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float)),
    "triangle": _equal_area(np.array(
        [[0, -1], [math.sqrt(3) / 2, 0.5], [-math.sqrt(3) / 2, 0.5]], float)),
    "star": _equal_area(_star()),
    "diamond": _equal_area(np.array([[0, -1.4], [1, 0], [0, 1.4], [-1, 0]], float)),
}
_ROTATION_JITTER = {"circle": 0.0, "square": 8.0, "triangle": 10.0, "star": 15.0,
                    "diamond": 6.0}


def _bounding_radius(kind):
  outline = _OUTLINES[kind]
  return 1.0 if outline is None else float(np.max(np.hypot(outline[:, 0], outline[:, 1])))


_BOUND = {kind: _bounding_radius(kind) for kind in KINDS}


@dataclasses.dataclass(frozen=True)
class RefShapesConfig:
  """What RefShapes generates. Defaults: 128px, sized for a 2-core CPU in ~10 minutes."""
  image_size: int = 128
  min_shapes: int = 3
  max_shapes: int = 6
  num_train: int = 5000
  num_val: int = 500
  num_testA: int = 500
  num_testB: int = 500
  seed: int = 0
  noise: float = 10.0            # std of per-pixel Gaussian noise, in 0..255 levels
  texture: float = 0.2           # brightness gradient across each shape, +- this fraction
  testA_extra_shapes: int = 2    # testA draws min+extra .. max+extra shapes
  distractor_prob: float = 0.9   # chance of forcing 1-2 same-kind/same-colour distractors
  big_prob: float = 0.4          # chance that a shape is "big"
  margin: float = 0.07           # positions must differ by this fraction of image_size

  def __post_init__(self):
    problems = [msg for bad, msg in (
        (self.image_size < 32, f"image_size={self.image_size} must be >= 32"),
        (self.min_shapes < 2, f"min_shapes={self.min_shapes} must be >= 2 (a target "
                              "needs distractors)"),
        (self.max_shapes < self.min_shapes, f"max_shapes={self.max_shapes} < "
                                            f"min_shapes={self.min_shapes}"),
        (self.max_shapes + self.testA_extra_shapes > 12,
         "max_shapes + testA_extra_shapes must be <= 12 (they must fit without overlap)"),
        (self.testA_extra_shapes < 0, "testA_extra_shapes must be >= 0"),
        (min(self.num_train, self.num_val, self.num_testA, self.num_testB) < 0,
         "split sizes must be >= 0"),
        (self.noise < 0 or not 0 <= self.texture < 1, "need noise >= 0, 0 <= texture < 1"),
        (not 0 <= self.distractor_prob <= 1 or not 0 <= self.big_prob <= 1,
         "distractor_prob and big_prob are probabilities"),
        (not 0 <= self.margin < 0.25, "margin must be in [0, 0.25)"),
    ) if bad]
    if problems:
      raise ValueError("bad RefShapesConfig: " + "; ".join(problems))


@dataclasses.dataclass(frozen=True)
class Shape:
  kind: str
  colour: str
  big: bool
  size: float    # radius of the equal-area circle, pixels; area ~= pi * size**2
  cx: float      # centre, pixels (x right, y down)
  cy: float
  angle: float   # rotation, degrees


@dataclasses.dataclass(frozen=True)
class Scene:
  shapes: tuple
  target: int         # index into shapes
  sentences: tuple    # 1-3 distinct expressions, each fitting exactly shapes[target]


def split_size(config, split):
  _check_split(split)
  return getattr(config, f"num_{split}")


def _check_split(split):
  if split not in _SPLIT_CODE:
    raise ValueError(f"unknown RefShapes split {split!r}; expected one of {SPLITS}")


def _rng(config, split, index, stream):
  # A SeedSequence over the tuple gives independent streams for every (split, index).
  return np.random.default_rng([config.seed, _SPLIT_CODE[split], index, stream])


# ---------------------------------------------------------------- scene sampling

def _shape_count(config, split, rng):
  extra = config.testA_extra_shapes if split == "testA" else 0
  return int(rng.integers(config.min_shapes + extra, config.max_shapes + extra + 1))


def _pick(rng, items):
  return items[int(rng.integers(len(items)))]


def _distractor_combo(rng, target, pool, how):
  """A (colour, kind) from pool sharing the target's kind, colour, or both."""
  colour, kind = target
  keep = {
      "same kind": lambda c, k: k == kind and c != colour,
      "same colour": lambda c, k: c == colour and k != kind,
      "same both": lambda c, k: (c, k) == target,
  }[how]
  return _pick(rng, [ck for ck in pool if keep(*ck)])


def _combos(config, split, rng, count):
  """Colour/kind of each shape; the target's is first."""
  target_pool, other_pool = ((tuple(sorted(HELD_OUT)), ALL_COMBOS) if split == "testB"
                             else (SEEN, SEEN))
  target = _pick(rng, target_pool)
  combos = [target]
  if rng.random() < config.distractor_prob:
    hows = ("same kind", "same colour", "same both")
    for _ in range(min(count - 1, int(rng.integers(1, 3)))):
      combos.append(_distractor_combo(rng, target, other_pool, _pick(rng, hows)))
  while len(combos) < count:
    combos.append(_pick(rng, other_pool))
  return combos


def _place(config, rng, combos):
  """Shapes at random non-overlapping positions, or None when they do not fit."""
  n, s = len(combos), config.image_size
  bigs = rng.random(n) < config.big_prob
  sizes = [rng.uniform(*_SIZE_BANDS[bool(b)]) * s for b in bigs]
  placed = [None] * n
  for i in sorted(range(n), key=lambda i: -sizes[i] * _BOUND[combos[i][1]]):
    colour, kind = combos[i]
    r = sizes[i] * _BOUND[kind]
    lo, hi = r + 1, s - r - 1
    for _ in range(_MAX_PLACE_TRIES):
      cx, cy = rng.uniform(lo, hi, size=2)
      if all(math.hypot(cx - p.cx, cy - p.cy) >= r + p.size * _BOUND[p.kind] + _GAP * s
             for p in placed if p is not None):
        break
    else:
      return None
    angle = rng.uniform(-1, 1) * _ROTATION_JITTER[kind]
    placed[i] = Shape(kind, colour, bool(bigs[i]), float(sizes[i]), float(cx), float(cy),
                      float(angle))
  return placed


# ---------------------------------------------------------------- expressions
#
# A noun phrase is (big, colour, kind) with None for "not said". The generator lists
# every template instance that could describe the target, keeps those that fit exactly
# it (clearly: see `margin`), and picks 1-3 from different families.

_AXES = {"left": (0, 1.0), "right": (0, -1.0), "top": (1, 1.0), "bottom": (1, -1.0)}
_EXTREME_WORDS = {"left": "leftmost", "right": "rightmost", "top": "top",
                  "bottom": "bottom"}
_ORDINALS = {2: "second", 3: "third"}
_SUPERLATIVES = {"smallest": 1.0, "largest": -1.0, "biggest": -1.0}
# relation -> (axis, sign): target coordinate minus landmark coordinate has this sign.
_RELATIONS = {"left of": (0, -1.0), "right of": (0, 1.0), "above": (1, -1.0),
              "below": (1, 1.0)}
_RELATION_CONE = 0.5
_RELATION_WORDS = {"left of": ("left of", "to the left of"),
                   "right of": ("right of", "to the right of"),
                   "above": ("above",), "below": ("below",)}


def _coord(shape, axis):
  return (shape.cx, shape.cy)[axis]


def _matches(shape, np_):
  big, colour, kind = np_
  return ((big is None or shape.big == big) and (colour is None or shape.colour == colour)
          and (kind is None or shape.kind == kind))


def _noun_phrases(shape, with_size=True):
  """Every NP true of the shape, from "shape" up to "big red circle"."""
  sizes = (None, shape.big) if with_size else (None,)
  return [(b, c, k) for b in sizes for c in (None, shape.colour) for k in (None, shape.kind)]


def _say(np_, rng):
  big, colour, kind = np_
  size = None if big is None else _pick(rng, _SIZE_WORDS[big])
  return " ".join(w for w in (size, colour, kind or "shape") if w)


def _attribute(shapes, t, margin):
  return [("attribute", np_) for np_ in _noun_phrases(shapes[t]) if np_ != (None,) * 3
          and sum(_matches(s, np_) for s in shapes) == 1]


def _superlative(shapes, t, margin):
  out = []
  for np_ in _noun_phrases(shapes[t], with_size=False):
    others = [s.size for i, s in enumerate(shapes) if i != t and _matches(s, np_)]
    if not others:
      continue
    ratio = (shapes[t].size / np.array(others)) ** 2
    for word, sign in _SUPERLATIVES.items():
      if np.all(ratio ** sign * _SUPERLATIVE_AREA_RATIO <= 1.0):
        out.append(("superlative", word, np_))
  return out


def _position(shapes, t, margin):
  out = []
  for np_, (side, (axis, sign)) in itertools.product(_noun_phrases(shapes[t]),
                                                     _AXES.items()):
    here = sign * _coord(shapes[t], axis)
    others = [sign * _coord(s, axis) for i, s in enumerate(shapes)
              if i != t and _matches(s, np_)]
    if not others or min(abs(o - here) for o in others) < margin:
      continue
    rank = 1 + sum(o < here for o in others)
    if rank == 1:
      out.append(("extreme", side, np_))
    elif rank in _ORDINALS:
      out.append(("ordinal", rank, side, np_))
  return out


def _unique_nps(shapes, i):
  """The shortest NPs that fit shapes[i] alone (used to name landmarks)."""
  fits = [np_ for np_ in _noun_phrases(shapes[i]) if np_ != (None,) * 3
          and sum(_matches(s, np_) for s in shapes) == 1]
  shortest = min((sum(a is not None for a in np_) for np_ in fits), default=0)
  return [np_ for np_ in fits if sum(a is not None for a in np_) == shortest]


def _relation(shapes, t, margin):
  out = []
  for l, landmark in enumerate(shapes):
    landmark_nps = _unique_nps(shapes, l) if l != t else []
    for np_ in (_noun_phrases(shapes[t]) if landmark_nps else []):
      group = [i for i, s in enumerate(shapes) if i != l and _matches(s, np_)]
      if len(group) < 2:
        continue    # the NP alone would already be unique: the relation adds nothing
      for rel, (axis, sign) in _RELATIONS.items():
        d = {i: sign * (_coord(shapes[i], axis) - _coord(landmark, axis)) for i in group}
        across = abs(_coord(shapes[t], 1 - axis) - _coord(landmark, 1 - axis))
        # "above" must look like above, not like "to the upper right": the offset along
        # the axis must be at least half the offset across it.
        if (d[t] >= max(margin, _RELATION_CONE * across)
            and all(d[i] <= -margin for i in group if i != t)):
          out.extend(("relation", np_, rel, lnp) for lnp in landmark_nps)
  return out


_FAMILIES = (_attribute, _superlative, _position, _relation)


# family -> sentence from the rest of the candidate tuple; synonyms drawn from rng
_TEMPLATES = {
    "attribute": lambda rng, np_: f"the {_say(np_, rng)}",
    "superlative": lambda rng, word, np_: f"the {word} {_say(np_, rng)}",
    "extreme": lambda rng, side, np_: f"the {_EXTREME_WORDS[side]} {_say(np_, rng)}",
    "ordinal": lambda rng, rank, side, np_:
        f"the {_ORDINALS[rank]} {_say(np_, rng)} from the {side}",
    "relation": lambda rng, np_, rel, lnp:
        f"the {_say(np_, rng)} {_pick(rng, _RELATION_WORDS[rel])} the {_say(lnp, rng)}",
}


def _render_expression(candidate, rng):
  return _TEMPLATES[candidate[0]](rng, *candidate[1:])


def _choose_sentences(shapes, t, margin, rng):
  """1-3 distinct expressions for shapes[t], from different families where possible."""
  by_family = [family(shapes, t, margin) for family in _FAMILIES]
  by_family = [exprs for exprs in by_family if exprs]
  if not by_family:
    return ()
  want = int(rng.integers(1, 4))
  order = [by_family[i] for i in rng.permutation(len(by_family))]
  sentences = []
  for exprs in itertools.islice(itertools.cycle(order), 3 * want):
    sentence = _render_expression(exprs[int(rng.integers(len(exprs)))], rng)
    if sentence not in sentences:
      sentences.append(sentence)
    if len(sentences) == want:
      break
  return tuple(sentences)


def scene(config, split, index):
  """The shapes, target and expressions of example `index` of `split` (no pixels)."""
  _check_split(split)
  if not 0 <= index < split_size(config, split):
    raise IndexError(f"RefShapes {split} index {index} out of range "
                     f"[0, {split_size(config, split)})")
  rng = _rng(config, split, index, stream=0)
  margin = config.margin * config.image_size
  for _ in range(_MAX_SCENE_TRIES):
    combos = _combos(config, split, rng, _shape_count(config, split, rng))
    shapes = _place(config, rng, combos)
    if shapes is None:
      continue
    order = rng.permutation(len(shapes))      # the target is not always shape 0
    shapes = tuple(shapes[i] for i in order)
    target = int(np.argmin(order))
    sentences = _choose_sentences(shapes, target, margin, rng)
    if sentences:
      return Scene(shapes, target, sentences)
  raise RuntimeError(
      f"RefShapes could not build {split}[{index}] in {_MAX_SCENE_TRIES} tries with "
      f"{config}: use a larger image_size or fewer shapes")


# ---------------------------------------------------------------- rendering

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
  r = shape.size * _BOUND[shape.kind]
  x0, y0 = max(0, int(shape.cx - r) - 1), max(0, int(shape.cy - r) - 1)
  x1, y1 = min(image_size, int(shape.cx + r) + 2), min(image_size, int(shape.cy + r) + 2)
  py, px = np.mgrid[y0:y1, x0:x1] + 0.5
  outline = _OUTLINES[shape.kind]
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
  rng = _rng(config, split, index, stream=1)
  n = config.image_size
  image = _background(config, rng)
  masks = []
  for shape in shapes:
    hue = (_HUES[shape.colour] + rng.uniform(-1, 1) * _HUE_JITTER) / 360
    colour = _hsv(hue, rng.uniform(*_SAT_RANGE), rng.uniform(*_VAL_RANGE))
    direction = rng.uniform(0, 2 * math.pi)
    y0, x0, window = _shape_window(shape, n)
    ys, xs = np.nonzero(window)
    ys, xs = ys + y0, xs + x0
    # Brightness ramps by +-texture across the shape's extent in a random direction.
    r = shape.size * _BOUND[shape.kind]
    ramp = ((xs + 0.5 - shape.cx) * math.cos(direction)
            + (ys + 0.5 - shape.cy) * math.sin(direction)) / r
    shade = (1 + config.texture * ramp).astype(np.float32)
    image[ys, xs] = np.minimum(colour * shade[:, None], 1)
    mask = np.zeros((n, n), bool)
    mask[ys, xs] = True
    masks.append(mask)
  image *= 255
  if config.noise > 0:
    image += config.noise * rng.standard_normal(image.shape, np.float32)
  return np.clip(np.rint(image), 0, 255).astype(np.uint8), masks


def _bbox(mask):
  ys, xs = np.nonzero(mask)
  return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
          float(ys.max() - ys.min() + 1)]


def example(config, split, index):
  """Example `index` of `split` as a RefCOCO-style dict (see the module docstring)."""
  sc = scene(config, split, index)
  image, masks = _render(config, split, index, sc.shapes)
  mask = masks[sc.target]
  ident = _SPLIT_CODE[split] * _ID_STRIDE + index
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
  stop = split_size(config, split) if stop is None else stop
  for index in range(start, stop):
    yield example(config, split, index)


def shard_indices(config, split, process_index=0, process_count=1):
  """This process's contiguous range of indices; the ranges of all processes partition
  the split (sizes differ by at most one)."""
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} not in [0, {process_count})")
  n = split_size(config, split)
  return range(n * process_index // process_count, n * (process_index + 1) // process_count)


# ---------------------------------------------------------------- tf.data

_TF_FIELDS = (  # name, dtype name, shape (None: image size)
    ("image", "uint8", (None, None, 3)), ("mask", "uint8", (None, None)),
    ("sentences", "string", (None,)), ("ref_id", "int64", ()), ("image_id", "int64", ()),
    ("bbox", "float32", (4,)), ("category_ids", "int64", (1,)), ("ann_ids", "int64", (1,)),
)


def _tf_arrays(config, split, index):
  ex = example(config, split, int(index))
  ex["sentences"] = np.array([s.encode() for s in ex["sentences"]], object)
  return [np.asarray(ex[name], dtype=object if dtype == "string" else dtype)
          for name, dtype, _ in _TF_FIELDS]


def as_tf_dataset(config, split, process_index=0, process_count=1):
  """A tf.data.Dataset of this process's shard of `split`, in index order, with the same
  keys and values as `example()`. Examples are generated in parallel map calls (numpy
  work under the GIL, so the gain is partial; one core makes ~350 examples/s anyway).
  `sentences` is a variable-length string vector, as for RefCOCO: choose one sentence
  per example (or use `ragged_batch`) before `batch`."""
  import tensorflow as tf
  try:
    tf.config.set_visible_devices([], "GPU")   # tf.data only; leave accelerators to JAX
  except RuntimeError:
    pass  # TF was already initialised by the caller, who has made this choice already
  indices = shard_indices(config, split, process_index, process_count)
  n = config.image_size
  dtypes = [tf.as_dtype(dtype) for _, dtype, _ in _TF_FIELDS]

  def load(index):
    arrays = tf.numpy_function(lambda i: _tf_arrays(config, split, i), [index], dtypes,
                               stateful=False)
    out = {}
    for (name, _, shape), array in zip(_TF_FIELDS, arrays):
      array.set_shape(tuple(n if d is None and name in ("image", "mask") else d
                            for d in shape))
      out[name] = array
    return out

  ds = tf.data.Dataset.range(indices.start, indices.stop)
  return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


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
