"""RefShapes: a synthetic referring-segmentation dataset that needs no download.

Each example is an image of a few flat shapes on a textured background, one of which
is the *target*, plus 1-3 English expressions that pick out exactly that shape, and
its exact pixel mask. It is the default dataset of `python -m jaxris.train`: a small
model learns it on a laptop CPU in minutes, yet it cannot be solved without reading
the text, because the target nearly always shares its kind or its colour with another
shape in the image.

  scene.py     the configuration, shapes and their placement, the splits; `scene()`
  language.py  the expressions (four families, each checked to fit the target alone)
  render.py    pixels and masks, `example()` / `examples()` dicts, `LazyExamples` (rendered on
               first read, for training), the contact sheet
  __main__.py  python -m jaxris.data.refshapes --out DIR --split val --count 16

Splits (mirroring RefCOCO's testA/testB naming in spirit: RefCOCO's testA holds
people, testB other objects; here testA is the training distribution made harder and
testB is a compositional split)
  train, val  same distribution, different random streams.
  <split>_nt  opt-in no-target variants of each split (render.py): a share of the expressions
              names a (colour, kind) that is not drawn; the mask is empty, `no_target` True.
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
  generate any index without coordination (`jaxris.data.loader` shards the examples per
  process).

`example()` gives the RefCOCO reader's format (render.py); `scene()` the underlying
description (kinds, colours, sizes, centres) for inspection and tests.
"""

from jaxris.data.refshapes.language import EXPRESSION_TYPES, expression_type
from jaxris.data.refshapes.render import (NO_TARGET_SPLITS, LazyExamples, contact_sheet, example, examples,
                                          shape_mask)
from jaxris.data.refshapes.scene import (COLOURS, HELD_OUT, KINDS, SPLITS, RefShapesConfig, Scene,
                                         Shape, scene, split_size)

__all__ = ["RefShapesConfig", "Shape", "Scene", "SPLITS", "NO_TARGET_SPLITS", "KINDS", "COLOURS", "HELD_OUT",
           "split_size", "scene", "example", "examples", "LazyExamples", "shape_mask", "contact_sheet",
           "EXPRESSION_TYPES", "expression_type"]
