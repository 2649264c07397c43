"""Writes a tiny RefCOCO-family data root in the exact official file formats.

  <root>/refcoco/refs(unc).p        Python 2 cPickle protocol 2 (byte strings, BINPUT memo)
  <root>/refcoco+/refs(unc).p       Python 3 pickle protocol 0
  <root>/refcocog/refs(umd).p, refs(google).p
  <root>/<dataset>/instances.json   COCO instances: polygons (multi-part), uncompressed RLE
                                    (crowd), compressed RLE
  <root>/grefcoco/grefs(unc).json   multi-target, single-target and no-target refs
  <root>/images/mscoco/images/train2014/COCO_train2014_%012d.jpg  (one grayscale)

`EXPECTED` lists, per dataset and split, the ref ids and sentences the reader must give.
"""

import json
import os
import pickle
import struct

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

IMAGES = {  # image_id -> (height, width, mode)
    9: (30, 40, "RGB"),
    25: (36, 24, "L"),  # Grayscale JPEG.
    42: (32, 32, "RGB"),
}


def _crowd_mask():
  m = np.zeros((36, 24), np.uint8)
  m[5:20, 3:10] = 1
  m[25:30, 15:22] = 1
  return m


def _compressed_mask():
  m = np.zeros((32, 32), np.uint8)
  m[10:28, 4:12] = 1
  return m


def _uncompressed_rle(mask):
  """COCO uncompressed RLE: run lengths over the column-major pixels, starting with 0s."""
  flat = np.asarray(mask, np.uint8).flatten(order="F")
  counts, value, run = [], 0, 0
  for v in flat:
    if v == value:
      run += 1
    else:
      counts.append(run)
      value, run = v, 1
  counts.append(run)
  return {"size": list(mask.shape), "counts": counts}


def _compressed_rle(mask):
  rle = mask_utils.encode(np.asfortranarray(mask))
  return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _box(mask):
  ys, xs = np.nonzero(mask)
  return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
          float(ys.max() - ys.min() + 1)]


def instances():
  """The COCO instances dict shared by all datasets of the fixture."""
  anns = [
      # Two overlapping polygon parts, as COCO objects split by occlusion.
      dict(id=101, image_id=9, category_id=1, iscrowd=0, area=200.0,
           bbox=[2.0, 3.0, 18.0, 20.0],
           segmentation=[[2, 3, 15, 3, 15, 18, 2, 18], [10, 10, 20, 12, 18, 23, 9, 20]]),
      dict(id=102, image_id=9, category_id=2, iscrowd=0, area=90.0,
           bbox=[25.0, 5.0, 12.0, 15.0],
           segmentation=[[25.5, 5.2, 37.0, 6.0, 33.1, 20.4, 26.0, 17.7]]),
      dict(id=103, image_id=25, category_id=1, iscrowd=1, area=140.0,
           bbox=_box(_crowd_mask()), segmentation=_uncompressed_rle(_crowd_mask())),
      dict(id=104, image_id=42, category_id=3, iscrowd=0, area=144.0,
           bbox=_box(_compressed_mask()), segmentation=_compressed_rle(_compressed_mask())),
      dict(id=105, image_id=42, category_id=2, iscrowd=0, area=60.0,
           bbox=[16.0, 2.0, 14.0, 9.0],
           segmentation=[[16, 2, 30, 2, 30, 11, 16, 11]]),
      dict(id=106, image_id=25, category_id=2, iscrowd=0, area=50.0,
           bbox=[12.0, 8.0, 10.0, 10.0],
           segmentation=[[12, 8, 22, 8, 22, 18, 12, 18]]),
  ]
  images = [dict(id=i, file_name="COCO_train2014_%012d.jpg" % i, height=h, width=w)
            for i, (h, w, _) in IMAGES.items()]
  categories = [dict(id=1, name="person", supercategory="person"),
                dict(id=2, name="dog", supercategory="animal"),
                dict(id=3, name="umbrella", supercategory="accessory")]
  return dict(images=images, annotations=anns, categories=categories)


def _ref(ref_id, ann_id, image_id, category_id, split, sentences, first_sent_id):
  sents = [dict(tokens=s.split(), raw=s, sent_id=first_sent_id + k, sent=s)
           for k, s in enumerate(sentences)]
  return dict(sent_ids=[s["sent_id"] for s in sents],
              file_name="COCO_train2014_%012d_%d.jpg" % (image_id, ref_id),
              ann_id=ann_id, ref_id=ref_id, image_id=image_id, split=split,
              sentences=sents, category_id=category_id)


# dataset -> list of (ref_id, ann_id, image_id, category_id, split, sentences)
_REFS = {
    "refcoco": [
        (0, 101, 9, 1, "train", ["the man on the left", "left guy in red", "person"]),
        (1, 102, 9, 2, "train", ["dog on the right"]),
        (2, 103, 25, 1, "val", ["crowd", "people in back"]),
        (3, 104, 42, 3, "testA", ["umbrella", "tall thing", "umbrella on the left"]),
        (4, 105, 42, 2, "testB", ["brown dog"]),
        (5, 101, 9, 1, "train", ["caf\u00e9 customer"]),  # Non-ASCII: a py2 unicode object.
    ],
    "refcoco+": [
        (10, 101, 9, 1, "train", ["red shirt"]),
        (11, 102, 9, 2, "val", ["animal", "fur"]),
        (12, 104, 42, 3, "testA", ["open one"]),
        (13, 105, 42, 2, "testB", ["small dog", "puppy", "doggy"]),
    ],
    "refcocog_umd": [
        (20, 101, 9, 1, "train", ["a man wearing a red shirt standing on the left"]),
        (21, 103, 25, 1, "val", ["the group of people in the background"]),
        (22, 104, 42, 3, "test", ["a black umbrella", "umbrella held up"]),
    ],
    "refcocog_google": [
        (30, 102, 9, 2, "train", ["a dog looking at the camera"]),
        (31, 105, 42, 2, "val", ["a small brown dog"]),
    ],
}

# gRefCOCO: (ref_id, ann_ids, image_id, category_ids, split, sentences, no_target)
_GREFS = [
    (100, [101, 102], 9, [1, 2], "train", ["both of them", "man and dog"], False),
    (101, [-1], 9, [-1], "train", ["the cat"], True),
    (102, [104], 42, [3], "val", ["umbrella"], False),
    (103, [-1], 42, [-1], "testA", ["the horse on the left"], True),
    (104, [103, 106], 25, [1, 2], "testB", ["everything"], False),
]


def expected(dataset, split):
  """[(ref_id, [ann_ids], [sentences])] the reader must return, in file order."""
  if dataset == "grefcoco":
    return [(r[0], [a for a in r[1] if a != -1], r[5]) for r in _GREFS if r[4] == split]
  return [(r[0], [r[1]], r[5]) for r in _REFS[dataset] if r[4] == split]


def py2_pickle(obj) -> bytes:
  """Serialises plain containers as Python 2's cPickle.dump(obj, f, 2) does: ASCII strings
  as byte strings (SHORT_BINSTRING/BINSTRING), others as unicode, each memoised."""
  out = bytearray(b"\x80\x02")
  memo = [0]

  def put():
    i = memo[0]
    memo[0] += 1
    out.extend(b"q" + bytes([i]) if i < 256 else b"r" + struct.pack("<I", i))

  def emit(x):
    if x is None:
      out.extend(b"N")
    elif isinstance(x, bool):
      out.extend(b"\x88" if x else b"\x89")
    elif isinstance(x, int):
      if 0 <= x < 256:
        out.extend(b"K" + bytes([x]))
      elif 0 <= x < 65536:
        out.extend(b"M" + struct.pack("<H", x))
      else:
        out.extend(b"J" + struct.pack("<i", x))
    elif isinstance(x, float):
      out.extend(b"G" + struct.pack(">d", x))
    elif isinstance(x, str):
      if x.isascii():
        data = x.encode("ascii")
        out.extend(b"U" + bytes([len(data)]) if len(data) < 256
                   else b"T" + struct.pack("<I", len(data)))
      else:
        data = x.encode("utf-8")
        out.extend(b"X" + struct.pack("<I", len(data)))
      out.extend(data)
      put()
    elif isinstance(x, list):
      out.extend(b"]")
      put()
      if x:
        out.extend(b"(")
        for item in x:
          emit(item)
        out.extend(b"e")
    elif isinstance(x, dict):
      out.extend(b"}")
      put()
      if x:
        out.extend(b"(")
        for k, v in x.items():
          emit(k)
          emit(v)
        out.extend(b"u")
    else:
      raise TypeError(type(x))

  emit(obj)
  out.extend(b".")
  return bytes(out)


def _write_images(image_dir):
  os.makedirs(image_dir, exist_ok=True)
  rng = np.random.default_rng(0)
  for image_id, (h, w, mode) in IMAGES.items():
    shape = (h, w) if mode == "L" else (h, w, 3)
    pixels = rng.integers(0, 256, shape, dtype=np.uint8)
    Image.fromarray(pixels, mode).save(
        os.path.join(image_dir, "COCO_train2014_%012d.jpg" % image_id), quality=95)


def write_root(root, datasets=("refcoco", "refcoco+", "refcocog_umd", "refcocog_google",
                               "grefcoco")):
  """Writes the fixture under `root` (only the listed datasets) and returns root."""
  folders = {"refcoco": "refcoco", "refcoco+": "refcoco+", "refcocog_umd": "refcocog",
             "refcocog_google": "refcocog", "grefcoco": "grefcoco"}
  sent_id = 0
  for dataset in datasets:
    folder = os.path.join(root, folders[dataset])
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "instances.json"), "w") as f:
      json.dump(instances(), f)
    if dataset == "grefcoco":
      grefs = []
      for ref_id, ann_ids, image_id, cats, split, sentences, no_target in _GREFS:
        ref = _ref(ref_id, ann_ids, image_id, cats, split, sentences, sent_id)
        ref["no_target"] = no_target
        grefs.append(ref)
        sent_id += len(sentences)
      with open(os.path.join(folder, "grefs(unc).json"), "w") as f:
        json.dump(grefs, f)
      continue
    refs = []
    for row in _REFS[dataset]:
      refs.append(_ref(*row, sent_id))
      sent_id += len(row[5])
    name = {"refcocog_umd": "refs(umd).p", "refcocog_google": "refs(google).p"}.get(
        dataset, "refs(unc).p")
    data = pickle.dumps(refs, protocol=0) if dataset == "refcoco+" else py2_pickle(refs)
    with open(os.path.join(folder, name), "wb") as f:
      f.write(data)
  _write_images(os.path.join(root, "images", "mscoco", "images", "train2014"))
  return root
