"""RefShapes scenes: the configuration, the shapes, their placement, and the splits.

A scene is 3-6 shapes (configurable) of 5 kinds x 6 colours, two size classes ("big" shapes
have at least 1.9x the area of "small" ones) and equal area for equal size whatever the kind.
Shapes never overlap (their bounding circles are kept apart), so a mask is exactly the pixels
of its shape as drawn. One shape is the target; most scenes add 1-2 distractors that share its
kind, its colour or both, so the text must be read. `scene()` adds the expressions
(language.py); render.py draws the pixels.

Splits: train and val draw from the same distribution (different random streams); testA
draws `testA_extra_shapes` more shapes per image; in testB the target's (colour, kind) is
always one of `HELD_OUT`, which are never drawn anywhere else (see the package docstring).
"""

import dataclasses
import math

import numpy as np

from jaxris.data.refshapes.language import choose_sentences

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

# Nominal size s (pixels) = radius of the equal-area circle, as a fraction of image_size.
_SIZE_BANDS = {False: (0.045, 0.065), True: (0.09, 0.115)}   # big -> band
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
OUTLINES = {
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
  outline = OUTLINES[kind]
  return 1.0 if outline is None else float(np.max(np.hypot(outline[:, 0], outline[:, 1])))


# Radius of each kind's bounding circle at size 1: placement keeps these circles apart.
BOUND = {kind: _bounding_radius(kind) for kind in KINDS}


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
  no_target_fraction: float = 0.3  # "<split>_nt" splits only: share of no-target expressions

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
  """The number of examples in `split`."""
  _check_split(split)
  return getattr(config, f"num_{split}")


def _check_split(split):
  if split not in _SPLIT_CODE:
    raise ValueError(f"unknown RefShapes split {split!r}; expected one of {SPLITS}")


def random_stream(config, split, index, stream):
  """Stream 0 draws example `index`'s scene, stream 1 its appearance (render.py).

  A SeedSequence over the tuple gives independent streams for every (split, index).
  """
  return np.random.default_rng([config.seed, _SPLIT_CODE[split], index, stream])


def example_id(split, index):
  """`ref_id` and `image_id` of an example: unique across splits."""
  return _SPLIT_CODE[split] * _ID_STRIDE + index


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
  for i in sorted(range(n), key=lambda i: -sizes[i] * BOUND[combos[i][1]]):
    colour, kind = combos[i]
    r = sizes[i] * BOUND[kind]
    lo, hi = r + 1, s - r - 1
    for _ in range(_MAX_PLACE_TRIES):
      cx, cy = rng.uniform(lo, hi, size=2)
      if all(math.hypot(cx - p.cx, cy - p.cy) >= r + p.size * BOUND[p.kind] + _GAP * s
             for p in placed if p is not None):
        break
    else:
      return None
    angle = rng.uniform(-1, 1) * _ROTATION_JITTER[kind]
    placed[i] = Shape(kind, colour, bool(bigs[i]), float(sizes[i]), float(cx), float(cy),
                      float(angle))
  return placed


# ---------------------------------------------------------------- the scene

def scene(config, split, index):
  """The shapes, target and expressions of example `index` of `split` (no pixels)."""
  _check_split(split)
  if not 0 <= index < split_size(config, split):
    raise IndexError(f"RefShapes {split} index {index} out of range "
                     f"[0, {split_size(config, split)})")
  rng = random_stream(config, split, index, stream=0)
  margin = config.margin * config.image_size
  for _ in range(_MAX_SCENE_TRIES):
    combos = _combos(config, split, rng, _shape_count(config, split, rng))
    shapes = _place(config, rng, combos)
    if shapes is None:
      continue
    order = rng.permutation(len(shapes))      # the target is not always shape 0
    shapes = tuple(shapes[i] for i in order)
    target = int(np.argmin(order))
    sentences = choose_sentences(shapes, target, margin, rng)
    if sentences:
      return Scene(shapes, target, sentences)
  raise RuntimeError(
      f"RefShapes could not build {split}[{index}] in {_MAX_SCENE_TRIES} tries with "
      f"{config}: use a larger image_size or fewer shapes")
