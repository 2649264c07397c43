"""RefShapes expressions: every way to refer to the target, kept only when it fits it alone.

Four families; every expression is checked to fit exactly one shape of the scene, and
"clearly": positions differ by at least `margin` (RefShapesConfig.margin x image_size
pixels), sizes compared by a superlative by at least 25% in area.
  attribute     "the red circle", "the big blue shape", "the small star"
  superlative   "the smallest red shape", "the largest triangle"
  position      "the leftmost circle", "the top star", "the second square from the right"
  relation      "the blue triangle left of the big circle", "the square above the green star"
A noun phrase (NP) is `[big|large|small|little] [colour] (kind|shape)`; "big"/"small" name
the size class. Superlatives use only colour/kind. Ordinals count shapes that match the NP
along one axis by their centres. "left of"/"right of"/"above"/"below" compare centres along
that axis: the target lies on the named side of the landmark (offset along the axis >=
margin and >= half the offset across it, so "above" never means "far to the upper right")
and every other shape matching the target NP lies clearly on the other side. The landmark NP
is itself unique in the image, and the target NP matches at least two shapes besides the
landmark (so the relation is needed).

Shapes are read through their kind, colour, big, size, cx and cy (scene.Shape).
"""

import itertools

import numpy as np

_SIZE_WORDS = {True: ("big", "large"), False: ("small", "little")}
_SUPERLATIVE_AREA_RATIO = 1.25   # the extreme shape differs from the rest by >= 25% in area


def _pick(rng, items):  # The same draw as scene.py's, from the scene's stream.
  return items[int(rng.integers(len(items)))]


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


EXPRESSION_TYPES = ("attribute", "superlative", "position", "relation")  # the four families, in order


def expression_type(sentence: str) -> str:
  """The family of a RefShapes expression (one of EXPRESSION_TYPES), read back from its words: a
  relation names a landmark through one of the relation words, a superlative or a position starts with
  its word ("the smallest ...", "the leftmost ...", "the second ... from the left"), the rest are
  attributes. Noun phrases hold only size, colour and kind words, so the families cannot be confused."""
  padded = f" {sentence.strip().lower()} "
  if any(f" {w} " in padded for words in _RELATION_WORDS.values() for w in words):
    return "relation"
  words = padded.split()
  first = words[1] if len(words) > 1 else ""
  if first in _SUPERLATIVES:
    return "superlative"
  if first in _EXTREME_WORDS.values() or first in _ORDINALS.values():
    return "position"
  return "attribute"


def choose_sentences(shapes, t, margin, rng):
  """1-3 distinct expressions for the target shapes[t], from different families where
  possible, or () when none fits; `margin` in pixels, `rng` the scene's random stream."""
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
