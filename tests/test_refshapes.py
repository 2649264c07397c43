"""RefShapes: determinism and pinned examples, expressions checked by an independent parser,
exact masks, the held-out split, distractors, and the contact-sheet command."""

import collections
import hashlib
import re
import subprocess
import sys

import numpy as np
import pytest

from jaxris.data import refshapes

CONFIG = refshapes.RefShapesConfig()
FLAT = refshapes.RefShapesConfig(noise=0.0, texture=0.0)   # exact colours, same scenes
SMALL = refshapes.RefShapesConfig(num_train=7, num_val=5, num_testA=5, num_testB=6)


# ---------------------------------------------------------------- independent checker
#
# Re-parses each sentence with its own grammar and judges it against the shapes as drawn:
# kind and colour from the scene description, size and position from the pixels of each
# shape's mask (area and centroid), not from the generator's numbers or decisions.

SIZE_WORDS = {"big": True, "large": True, "small": False, "little": False}
NP = (r"(?:(?P<{p}size>big|large|small|little) )?(?:(?P<{p}colour>{colours}) )?"
      r"(?P<{p}noun>{kinds}|shape)")


def _np(prefix):
  return NP.format(p=prefix, colours="|".join(refshapes.COLOURS),
                   kinds="|".join(refshapes.KINDS))


GRAMMAR = {  # family -> full-sentence pattern
    "superlative": rf"the (?P<sup>smallest|largest|biggest) {_np('t')}",
    "extreme": rf"the (?P<ext>leftmost|rightmost|top|bottom) {_np('t')}",
    "ordinal": rf"the (?P<ord>second|third) {_np('t')} from the (?P<side>left|right|top|bottom)",
    "relation": rf"the {_np('t')} (?:to the )?(?P<rel>left of|right of|above|below) the {_np('l')}",
    "attribute": rf"the {_np('t')}",
}
EXPRESSION_TYPE = {"superlative": "superlative", "extreme": "position", "ordinal": "position",
                   "relation": "relation", "attribute": "attribute"}
# side -> (axis of the centroid, sign): rank 1 has the smallest sign * coordinate.
SIDE = {"left": (1, 1), "right": (1, -1), "top": (0, 1), "bottom": (0, -1)}
EXTREME_SIDE = {"leftmost": "left", "rightmost": "right", "top": "top", "bottom": "bottom"}
RANK = {"second": 2, "third": 3}
# relation -> (axis, sign of target minus landmark coordinate)
RELATION = {"left of": (1, -1), "right of": (1, 1), "above": (0, -1), "below": (0, 1)}


def parse(sentence):
  for family, pattern in GRAMMAR.items():
    m = re.fullmatch(pattern, sentence)
    if m:
      return family, m.groupdict()
  raise AssertionError(f"sentence outside the grammar: {sentence!r}")


def drawn(config, sc):
  """Per shape: kind, colour, size class, pixel area, pixel centroid (row, col)."""
  out = []
  for shape in sc.shapes:
    ys, xs = np.nonzero(refshapes.shape_mask(shape, config.image_size))
    out.append(dict(kind=shape.kind, colour=shape.colour, big=shape.big, area=len(ys),
                    centre=(ys.mean() + 0.5, xs.mean() + 0.5)))
  return out


def matching(shapes, g, prefix):
  size, colour, noun = g[prefix + "size"], g[prefix + "colour"], g[prefix + "noun"]
  return [i for i, s in enumerate(shapes)
          if (size is None or s["big"] == SIZE_WORDS[size])
          and (colour is None or s["colour"] == colour)
          and (noun == "shape" or s["kind"] == noun)]


def referents(sentence, shapes, margin):
  """(indices the sentence fits under strict semantics, whether it fits clearly)."""
  family, g = parse(sentence)
  group = matching(shapes, g, "t")
  if family == "attribute":
    return group, True
  if family == "superlative":
    sign = 1 if g["sup"] == "smallest" else -1
    areas = {i: sign * shapes[i]["area"] for i in group}
    best = min(areas.values())
    fits = [i for i in group if areas[i] == best]
    others = [abs(areas[i]) for i in group if i not in fits]
    # visibly different: >= 10% in pixel area (the generator promises 25% nominal)
    ratio_ok = all(max(a, abs(best)) >= 1.1 * min(a, abs(best)) for a in others)
    return fits, len(group) >= 2 and ratio_ok
  if family in ("extreme", "ordinal"):
    side = EXTREME_SIDE[g["ext"]] if family == "extreme" else g["side"]
    rank = 1 if family == "extreme" else RANK[g["ord"]]
    axis, sign = SIDE[side]
    key = {i: sign * shapes[i]["centre"][axis] for i in group}
    fits = [i for i in group if 1 + sum(key[j] < key[i] for j in group) == rank]
    clear = len(fits) == 1 and all(abs(key[j] - key[fits[0]]) >= margin
                                   for j in group if j != fits[0])
    return fits, clear and len(group) >= 2
  landmarks = matching(shapes, g, "l")
  assert len(landmarks) == 1, f"landmark of {sentence!r} is not unique: {landmarks}"
  (l,) = landmarks
  axis, sign = RELATION[g["rel"]]
  d = {i: sign * (shapes[i]["centre"][axis] - shapes[l]["centre"][axis])
       for i in group if i != l}
  fits = [i for i in d if d[i] > 0]
  # clearly: nobody near the landmark's line, and the referent more along than across
  across = {i: abs(shapes[i]["centre"][1 - axis] - shapes[l]["centre"][1 - axis])
            for i in fits}
  return fits, (all(abs(v) >= margin for v in d.values())
                and all(d[i] >= 0.4 * across[i] for i in fits))


def _digest(ex):
  h = hashlib.sha256()
  for key in sorted(ex):
    h.update(key.encode())
    h.update(np.asarray(ex[key]).tobytes() if key in ("image", "mask") else
             repr(ex[key]).encode())
  return h.hexdigest()


def _combo(sc):
  t = sc.shapes[sc.target]
  return t.colour, t.kind


# ---------------------------------------------------------------- tests

def test_same_example_twice_and_in_another_process():
  keys = [(split, i) for split in refshapes.SPLITS for i in (0, 3, 499)]
  here = [_digest(refshapes.example(CONFIG, s, i)) for s, i in keys]
  assert here == [_digest(refshapes.example(CONFIG, s, i)) for s, i in keys]
  code = ("import hashlib, numpy as np, sys\n"
          "sys.path.insert(0, %r)\n"
          "from tests.test_refshapes import _digest, CONFIG\n"
          "from jaxris.data import refshapes\n"
          "for s, i in %r: print(_digest(refshapes.example(CONFIG, s, i)))\n"
          % (str(__import__('pathlib').Path(__file__).parents[1]), keys))
  there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
  assert there == here
  # A shard generated from its own start index equals the same indices read in order.
  window = list(refshapes.examples(CONFIG, "train", 10, 13))
  assert [_digest(e) for e in window] == [
      _digest(refshapes.example(CONFIG, "train", i)) for i in range(10, 13)]


# Image hash (sha256 of the uint8 bytes, 20 hex digits), sentences and `_digest` of a few
# examples, computed with the single-module refshapes.py (commit 2679371) before it became a
# package: any change to the scenes, the grammar or the pixels shows up here.
OTHER = refshapes.RefShapesConfig(image_size=64, min_shapes=2, max_shapes=4, seed=3, noise=3.0)
PINNED = [
    (CONFIG, "train", 0, "385db55b9ae0bfb4443b", ["the smallest green shape"],
     "d119e8e125c4ee98c711"),
    (CONFIG, "val", 3, "f059b79224205db632f5",
     ["the large purple square below the yellow shape"], "30342943cbcad368f06d"),
    (CONFIG, "testA", 17, "345c0235de7223418685",
     ["the orange shape", "the third shape from the left"], "d36134b52331d5661777"),
    (CONFIG, "testB", 499, "796276f5a92586d11877",
     ["the rightmost shape", "the largest diamond", "the second little diamond from the left"],
     "4062e70749315bc1cab7"),
    (OTHER, "train", 9, "19024d1a8175dcef56a1", ["the leftmost triangle", "the biggest triangle"],
     "d9a95558e396f5589970"),
]


@pytest.mark.parametrize("config,split,index,image_hash,sentences,digest", PINNED)
def test_pinned_examples_are_unchanged(config, split, index, image_hash, sentences, digest):
  ex = refshapes.example(config, split, index)
  assert ex["sentences"] == sentences
  assert hashlib.sha256(ex["image"].tobytes()).hexdigest()[:20] == image_hash
  assert _digest(ex)[:20] == digest


def test_seed_changes_the_data():
  other = refshapes.RefShapesConfig(seed=1)
  assert _digest(refshapes.example(CONFIG, "train", 0)) != _digest(
      refshapes.example(other, "train", 0))


@pytest.mark.parametrize("split", refshapes.SPLITS)
def test_every_expression_fits_exactly_its_target(split):
  margin = 0.8 * CONFIG.margin * CONFIG.image_size   # centroids vs nominal centres
  families = collections.Counter()
  for index in range(120):
    sc = refshapes.scene(CONFIG, split, index)
    shapes = drawn(CONFIG, sc)
    assert 1 <= len(sc.sentences) <= 3 and len(set(sc.sentences)) == len(sc.sentences)
    for sentence in sc.sentences:
      fits, clear = referents(sentence, shapes, margin)
      assert fits == [sc.target], (split, index, sentence, fits, sc)
      assert clear, (split, index, sentence, sc)
      families[parse(sentence)[0]] += 1
      # The evaluation's expression types (extreme and ordinal are both "position").
      assert refshapes.expression_type(sentence) == EXPRESSION_TYPE[parse(sentence)[0]], sentence
  # every family is used, none dominates
  assert set(families) == set(GRAMMAR), families
  assert max(families.values()) < 0.5 * sum(families.values()), families


def test_checker_rejects_wrong_expressions():
  # The checker must be able to fail: a sentence made for one scene, read against another
  # scene, or naming the wrong attribute, must not fit exactly that target.
  sc = refshapes.scene(CONFIG, "val", 0)
  shapes = drawn(CONFIG, sc)
  t = sc.shapes[sc.target]
  wrong_colour = next(c for c in refshapes.COLOURS if c != t.colour)
  fits, _ = referents(f"the {wrong_colour} {t.kind}", shapes, 1.0)
  assert sc.target not in fits
  fits, _ = referents("the shape", shapes, 1.0)
  assert len(fits) == len(shapes) > 1
  with pytest.raises(AssertionError, match="outside the grammar"):
    parse("the circle that is red")


def test_masks_are_exactly_the_targets_pixels():
  for split in refshapes.SPLITS:
    for index in range(25):
      ex = refshapes.example(FLAT, split, index)
      noisy = refshapes.example(CONFIG, split, index)
      sc = refshapes.scene(FLAT, split, index)
      mask = ex["mask"].astype(bool)
      assert ex["mask"].dtype == np.uint8 and set(np.unique(ex["mask"])) == {0, 1}
      assert ex["mask"].shape == ex["image"].shape[:2] == (128, 128)
      assert ex["image"].dtype == np.uint8 and ex["image"].shape[2] == 3
      # noise/texture change the pixels, never the scene, mask or text
      np.testing.assert_array_equal(noisy["mask"], ex["mask"])
      assert noisy["sentences"] == ex["sentences"]
      assert not np.array_equal(noisy["image"], ex["image"])
      # unshaded and noiseless, the target is one flat colour that appears nowhere else
      colour = ex["image"][mask][0]
      same = np.all(ex["image"] == colour, axis=-1)
      np.testing.assert_array_equal(same, mask, err_msg=f"{split}[{index}]")
      # the mask is the target's outline rasterised; every other shape is elsewhere
      t = sc.shapes[sc.target]
      np.testing.assert_array_equal(mask, refshapes.shape_mask(t, 128))
      others = [refshapes.shape_mask(s, 128) for i, s in enumerate(sc.shapes)
                if i != sc.target]
      assert not any((mask & o).any() for o in others)
      assert all(o.any() for o in others)
      # equal-area kinds: pixel count ~ pi * size^2, the centroid at the centre
      ys, xs = np.nonzero(mask)
      assert abs(len(ys) / (np.pi * t.size ** 2) - 1) < 0.15, (t, len(ys))
      assert abs(xs.mean() + 0.5 - t.cx) < 0.2 * t.size and abs(
          ys.mean() + 0.5 - t.cy) < 0.25 * t.size
      x, y, w, h = ex["bbox"]
      assert (x, y, w, h) == (xs.min(), ys.min(), xs.max() - xs.min() + 1,
                              ys.max() - ys.min() + 1)
      assert 0 <= x and 0 <= y and x + w <= 128 and y + h <= 128
      assert ex["category_ids"] == [refshapes.KINDS.index(t.kind)]
      assert ex["ann_ids"] == [sc.target]


def test_image_size_is_configurable():
  config = refshapes.RefShapesConfig(image_size=64, min_shapes=2, max_shapes=4)
  for index in range(10):
    ex = refshapes.example(config, "train", index)
    assert ex["image"].shape == (64, 64, 3) and ex["mask"].sum() > 0
    assert 2 <= len(refshapes.scene(config, "train", index).shapes) <= 4


def test_testB_targets_only_held_out_combinations():
  assert len(refshapes.HELD_OUT) == 6
  assert {c for c, _ in refshapes.HELD_OUT} == set(refshapes.COLOURS)
  assert {k for _, k in refshapes.HELD_OUT} <= set(refshapes.KINDS)
  for index in range(150):
    for split in ("train", "val", "testA"):
      sc = refshapes.scene(CONFIG, split, index)
      # held-out combinations are never drawn outside testB, target or not
      assert not {(s.colour, s.kind) for s in sc.shapes} & refshapes.HELD_OUT, (split, sc)
    assert _combo(refshapes.scene(CONFIG, "testB", index)) in refshapes.HELD_OUT
  # every held-out combination is actually tested
  assert {_combo(refshapes.scene(CONFIG, "testB", i)) for i in range(150)} == set(
      refshapes.HELD_OUT)


def test_testA_has_more_shapes():
  count = lambda split: np.mean([len(refshapes.scene(CONFIG, split, i).shapes)
                                 for i in range(60)])
  assert count("testA") > count("train") + 1
  assert max(len(refshapes.scene(CONFIG, "train", i).shapes) for i in range(60)) <= 6


def test_splits_are_disjoint():
  digests, ids = {}, {}
  for split in refshapes.SPLITS:
    exs = list(refshapes.examples(CONFIG, split, 0, 80))
    digests[split] = {hashlib.sha256(e["image"].tobytes()).hexdigest() for e in exs}
    ids[split] = {e["image_id"] for e in exs}
    assert len(digests[split]) == len(ids[split]) == 80
  for a in refshapes.SPLITS:
    for b in refshapes.SPLITS:
      if a < b:
        assert not digests[a] & digests[b] and not ids[a] & ids[b], (a, b)


def test_split_sizes_and_bad_requests():
  assert refshapes.SPLITS == ("train", "val", "testA", "testB")
  assert [refshapes.split_size(SMALL, s) for s in refshapes.SPLITS] == [7, 5, 5, 6]
  assert len(list(refshapes.examples(SMALL, "testB"))) == 6
  with pytest.raises(ValueError, match="unknown RefShapes split"):
    refshapes.example(CONFIG, "test", 0)
  with pytest.raises(IndexError):
    refshapes.example(SMALL, "val", 5)
  with pytest.raises(ValueError, match="min_shapes"):
    refshapes.RefShapesConfig(min_shapes=1)
  with pytest.raises(ValueError, match="max_shapes"):
    refshapes.RefShapesConfig(min_shapes=5, max_shapes=4)


def test_lazy_examples_render_each_example_once_when_first_read(monkeypatch):
  """What training reads (jaxris.data.inputs.train_examples): the same examples as examples(), each
  rendered on its first read only; its length and the loader's training items render none."""
  from jaxris.data.loader import expand_examples
  from jaxris.data.refshapes import render
  want = list(refshapes.examples(SMALL, "train"))
  rendered = []
  real = render.example
  monkeypatch.setattr(render, "example", lambda config, split, i: rendered.append(i) or real(config, split, i))
  lazy = refshapes.LazyExamples(SMALL, "train")
  assert len(lazy) == 7
  np.testing.assert_array_equal(expand_examples(lazy, per_sentence=False), [[i, -1] for i in range(7)])
  assert rendered == []
  got = [lazy[2], lazy[-1], *lazy[1:3], lazy[2]]
  assert rendered == [2, 6, 1]
  for ex, i in zip(got, [2, 6, 1, 2, 2]):
    assert ex["sentences"] == want[i]["sentences"] and ex["ref_id"] == want[i]["ref_id"]
    np.testing.assert_array_equal(ex["image"], want[i]["image"])
    np.testing.assert_array_equal(ex["mask"], want[i]["mask"])
  with pytest.raises(IndexError):
    lazy[7]


def test_most_targets_have_a_same_kind_or_same_colour_distractor():
  for split in refshapes.SPLITS:
    hits = []
    for index in range(200):
      sc = refshapes.scene(CONFIG, split, index)
      t = sc.shapes[sc.target]
      hits.append(any(s.kind == t.kind or s.colour == t.colour
                      for i, s in enumerate(sc.shapes) if i != sc.target))
    assert np.mean(hits) >= 0.85, (split, np.mean(hits))


def test_contact_sheet_command(tmp_path, capsys):
  from jaxris.data.refshapes.__main__ import main
  main(["--out", str(tmp_path), "--split", "testB", "--count", "5"])
  path = tmp_path / "refshapes_testB_0.png"
  assert capsys.readouterr().out.strip() == str(path)
  from PIL import Image
  sheet = np.asarray(Image.open(path))
  assert sheet.shape[1] == 4 * (2 * 128 + 8) and sheet.shape[0] > 2 * (2 * 128)
  assert sheet.std() > 10    # images were drawn, not a blank page
  with pytest.raises(SystemExit) as exit_:
    main(["--help"])
  assert exit_.value.code == 0
  assert "contact sheet" in capsys.readouterr().out
  # The documented command line runs the same main.
  done = subprocess.run([sys.executable, "-m", "jaxris.data.refshapes", "--out",
                         str(tmp_path / "cli"), "--split", "val", "--count", "2"],
                        capture_output=True, text=True, check=True,
                        cwd=str(__import__("pathlib").Path(__file__).parents[1]))
  assert done.stdout.strip() == str(tmp_path / "cli" / "refshapes_val_0.png")
