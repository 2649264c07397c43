"""RefCOCO, RefCOCO+, RefCOCOg and gRefCOCO, read from the official annotation files.

The files are read the way the official loaders read them: the refer API
(lichengunc/refer, refer.py) for RefCOCO/RefCOCO+/RefCOCOg and grefer.py
(henghuiding/gRefCOCO) for gRefCOCO. A ref is joined to its annotation(s) through
`ann_id` and to its image through `image_id` in the dataset's own `instances.json`;
its expressions are `ref['sentences'][i]['sent']`, in file order.

Directory layout (`root` below; the refer API's data/README.md layout):

  <root>/refcoco/refs(unc).p        <root>/refcoco/instances.json
  <root>/refcoco+/refs(unc).p       <root>/refcoco+/instances.json
  <root>/refcocog/refs(umd).p       <root>/refcocog/instances.json
  <root>/refcocog/refs(google).p
  <root>/grefcoco/grefs(unc).json   <root>/grefcoco/instances.json
  <root>/images/mscoco/images/train2014/COCO_train2014_000000000009.jpg ...

The image directory defaults to the refer API's `<root>/images/mscoco/images/train2014`;
when that does not exist but `<root>/images/train2014` does (the layout of grefer.py
and of ReLA's datasets/DATASET.md), that one is used. Pass `image_dir=` to put the COCO
train2014 images anywhere else. Image files are named by `file_name` in instances.json.

Where the files come from:
  refcoco.zip, refcoco+.zip, refcocog.zip: https://bvisionweb1.cs.unc.edu/licheng/referit/data/
    (mirrors: https://github.com/lichengunc/refer/issues/14), unzipped into <root>.
  gRefCOCO: https://github.com/henghuiding/gRefCOCO (Google Drive or the
    HuggingFace dataset FudanCVL/gRefCOCO), files into <root>/grefcoco/.
  COCO train2014 images: http://images.cocodataset.org/zips/train2014.zip.

Datasets and splits (names as in the official files):
  refcoco, refcoco+   refs(unc).p    train, val, testA, testB
  refcocog_umd        refs(umd).p    train, val, test
  refcocog_google     refs(google).p train, val
  grefcoco            grefs(unc).json train, val, testA, testB
Split selection follows refer.py's getRefIds: train/val match exactly, testA/testB
match any split containing the letter (testAB too), test any split containing "test".

Each example (one per ref; `jaxris.data.loader` expands them to one per sentence
for evaluation) is a dict:
  image_path    str, the COCO image file
  sentences     list[str], the ref's expressions in file order
  sent_ids      list[int]
  mask          RleMask: the HxW uint8 {0,1} mask, decoded on demand by
                `np.asarray(mask)` from compressed RLE (a split keeps ~1 KB per ref in
                memory instead of ~300 KB); the union of all targets for gRefCOCO, all
                zeros for a no-target expression
  ref_id, image_id  int
  ann_ids, category_ids  list[int] (one entry for RefCOCO*; any number for gRefCOCO;
                empty for a no-target ref, whose file entry is ann_id [-1])
  bbox          [x, y, w, h] in pixels: the target's COCO box, the box enclosing all
                targets for gRefCOCO, [0, 0, 0, 0] for no target
  boxes         list of [x, y, w, h], one per target
  no_target     bool (gRefCOCO's `no_target` / ann_id [-1])
  height, width int, the image size from instances.json
  split, dataset  str

Masks are pycocotools' annToMask for each target (polygons merged, RLE for crowd
annotations), merged with a union for several targets. (refer.py's getMask sums the
polygon parts, so a pixel covered by two parts is 2; every official consumer treats it
as foreground, which the union does directly. For gRefCOCO the union includes crowd
targets, as EVF-SAM's loader does; grefer.py's getMaskByRef and ReLA leave them out.)

  python -m jaxris.data.refcoco --root DIR --check   # what is there, counts, what is missing
"""

import argparse
import functools
import json
import os
import sys

import numpy as np
from pycocotools import mask as mask_utils
from tqdm import tqdm

from jaxris.data import safe_pickle

__all__ = ["DATASETS", "SPLITS", "RleMask", "read_split", "image_dir_for", "annotation_files",
           "check", "main"]

_REFER_URL = ("https://bvisionweb1.cs.unc.edu/licheng/referit/data/{zip} "
              "(mirrors: https://github.com/lichengunc/refer/issues/14)")
_GREFCOCO_URL = ("https://github.com/henghuiding/gRefCOCO (Google Drive, or the HuggingFace "
                 "dataset FudanCVL/gRefCOCO)")
_COCO_URL = "http://images.cocodataset.org/zips/train2014.zip"

# dataset -> (folder under root, refs file, splits, where the folder comes from)
_TABLE = {
    "refcoco": ("refcoco", "refs(unc).p", ("train", "val", "testA", "testB"),
                _REFER_URL.format(zip="refcoco.zip")),
    "refcoco+": ("refcoco+", "refs(unc).p", ("train", "val", "testA", "testB"),
                 _REFER_URL.format(zip="refcoco+.zip")),
    "refcocog_umd": ("refcocog", "refs(umd).p", ("train", "val", "test"),
                     _REFER_URL.format(zip="refcocog.zip")),
    "refcocog_google": ("refcocog", "refs(google).p", ("train", "val"),
                        _REFER_URL.format(zip="refcocog.zip")),
    "grefcoco": ("grefcoco", "grefs(unc).json", ("train", "val", "testA", "testB"),
                 _GREFCOCO_URL),
}
DATASETS = tuple(_TABLE)
SPLITS = {name: row[2] for name, row in _TABLE.items()}

# The refer API's image folder first, then grefer.py's / ReLA's.
_IMAGE_DIRS = (os.path.join("images", "mscoco", "images", "train2014"),
               os.path.join("images", "train2014"))


class RleMask:
  """An HxW uint8 {0,1} mask stored as compressed COCO RLE, decoded on demand.

  `np.asarray(m)` (or `m.decode()`) gives the array; `shape`, `dtype` and `ndim` are
  those of the array. `rle` is the pycocotools RLE dict, or None for an all-zero mask.
  """

  dtype = np.dtype(np.uint8)
  ndim = 2

  def __init__(self, rle, shape):
    self.rle = rle
    self.shape = (int(shape[0]), int(shape[1]))

  def decode(self) -> np.ndarray:
    if self.rle is None:
      return np.zeros(self.shape, np.uint8)
    return np.ascontiguousarray(mask_utils.decode(self.rle), dtype=np.uint8)

  def __array__(self, dtype=None, copy=None):
    array = self.decode()
    return array if dtype is None else array.astype(dtype)

  def __repr__(self):
    area = 0 if self.rle is None else int(mask_utils.area(self.rle))
    return f"RleMask(shape={self.shape}, area={area})"


def annotation_files(root: str, dataset: str) -> tuple[str, str]:
  """(refs file, instances.json) paths of `dataset` under `root`."""
  folder, refs_name, _, _ = _row(dataset)
  return (os.path.join(root, folder, refs_name), os.path.join(root, folder, "instances.json"))


def image_dir_for(root: str, image_dir: str | None = None) -> str:
  """The COCO train2014 folder: `image_dir` if given, else the first official layout found."""
  if image_dir is not None:
    if not os.path.isdir(image_dir):
      raise FileNotFoundError(
          f"Image folder {image_dir} does not exist. It should hold the COCO train2014 "
          f"images (COCO_train2014_*.jpg) from {_COCO_URL}.")
    return image_dir
  candidates = [os.path.join(root, d) for d in _IMAGE_DIRS]
  for candidate in candidates:
    if os.path.isdir(candidate):
      return candidate
  raise FileNotFoundError(
      f"No COCO train2014 image folder under {root}: looked for {candidates[0]} (refer API "
      f"layout) and {candidates[1]} (gRefCOCO/ReLA layout). Unzip {_COCO_URL} there, or "
      "pass image_dir=.")


def read_split(root: str, dataset: str, split: str, *, image_dir: str | None = None,
               check_images: bool = True) -> list[dict]:
  """Reads one split of one dataset from the official files; one example per ref.

  Args:
    root: the data root (layout in the module docstring).
    dataset: one of DATASETS.
    split: one of SPLITS[dataset].
    image_dir: the COCO train2014 folder; default: found under root (module docstring).
    check_images: fail up front, naming them, if any image file of the split is missing.

  Returns:
    A list of example dicts (keys in the module docstring), in file order.
  """
  _, _, splits, _ = _row(dataset)
  if split not in splits:
    raise ValueError(f"Unknown split {split!r} for {dataset}; it has {', '.join(splits)}.")
  refs_path, instances_path = annotation_files(root, dataset)
  images_folder = image_dir_for(root, image_dir)
  refs, images, anns = _load(refs_path, instances_path)
  chosen = [r for r in refs if _in_split(r["split"], split, dataset)]
  examples = [_example(ref, images, anns, images_folder, dataset, refs_path, instances_path)
              for ref in tqdm(chosen, desc=f"{dataset} {split}", unit="ref", disable=None,
                              leave=False)]
  if check_images:
    _check_images_exist(examples, images_folder)
  return examples


# ------------------------------------------------------------------------------------------
# Reading and joining the files.


def _row(dataset):
  if dataset not in _TABLE:
    raise ValueError(f"Unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}.")
  return _TABLE[dataset]


def _in_split(ref_split, split, dataset):
  """refer.py getRefIds' split semantics (grefer.py matches exactly)."""
  if dataset == "grefcoco" or split in ("train", "val"):
    return ref_split == split
  if split in ("testA", "testB", "testC"):
    return split[-1] in ref_split
  if split == "test":
    return "test" in ref_split
  return ref_split == split


def _require(path, dataset_hint):
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Missing {path}. It comes from {dataset_hint}.")


@functools.lru_cache(maxsize=1)  # Reading several splits parses the files once.
def _load_cached(refs_path, instances_path, refs_mtime, instances_mtime):
  del refs_mtime, instances_mtime  # Only part of the cache key: re-read a changed file.
  refs = _load_refs(refs_path)
  with open(instances_path, "rb") as f:
    try:
      instances = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise ValueError(f"{instances_path}: not valid JSON ({e}); re-download it.") from e
  for key in ("images", "annotations"):
    if not isinstance(instances, dict) or not isinstance(instances.get(key), list):
      raise ValueError(f"{instances_path}: expected a COCO instances file with an {key!r} "
                       "list; re-download it.")
  images = {img["id"]: img for img in instances["images"]}
  anns = {ann["id"]: ann for ann in instances["annotations"]}
  return refs, images, anns


def _load(refs_path, instances_path):
  hint = _hint_for(refs_path)
  _require(refs_path, hint)
  _require(instances_path, hint)
  return _load_cached(refs_path, instances_path, os.path.getmtime(refs_path),
                      os.path.getmtime(instances_path))


def _hint_for(path):
  for folder, refs_name, _, hint in _TABLE.values():
    if path.endswith(os.path.join(folder, refs_name)):
      return hint
  return "the official dataset release"


def _load_refs(path):
  """The refs list: .p through the restricted unpickler, .json through json."""
  if path.endswith(".json"):
    with open(path, "rb") as f:
      try:
        refs = json.load(f)
      except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e}); re-download it.") from e
  else:
    refs = safe_pickle.load(path)
  if not isinstance(refs, list):
    raise ValueError(f"{path}: expected a list of refs, got {type(refs).__name__}.")
  for i, ref in enumerate(refs):
    missing = [k for k in ("ref_id", "ann_id", "image_id", "split", "sentences")
               if not isinstance(ref, dict) or k not in ref]
    if missing:
      raise ValueError(f"{path}: ref #{i} lacks {', '.join(missing)}; the file is not an "
                       "official refs file or is corrupt.")
  return refs


def _as_list(x):
  return list(x) if isinstance(x, (list, tuple)) else [x]


def _example(ref, images, anns, image_dir, dataset, refs_path, instances_path):
  where = f"{refs_path}: ref {ref['ref_id']}"
  image = images.get(ref["image_id"])
  if image is None:
    raise ValueError(f"{where}: image_id {ref['image_id']} is not in {instances_path}.")
  height, width = int(image["height"]), int(image["width"])

  ann_ids = [int(a) for a in _as_list(ref["ann_id"]) if int(a) != -1]
  category_ids = [int(c) for c in _as_list(ref.get("category_id", [])) if int(c) != -1]
  no_target = bool(ref.get("no_target", False)) or not ann_ids
  if no_target and ann_ids:
    raise ValueError(f"{where}: marked no_target but lists targets {ann_ids}.")
  targets = []
  for ann_id in ann_ids:
    if ann_id not in anns:
      raise ValueError(f"{where}: ann_id {ann_id} is not in {instances_path}.")
    if anns[ann_id].get("image_id") != ref["image_id"]:
      raise ValueError(f"{where}: ann_id {ann_id} belongs to image "
                       f"{anns[ann_id].get('image_id')}, not to the ref's {ref['image_id']}.")
    targets.append(anns[ann_id])

  rles = [_ann_rle(ann, height, width, f"{instances_path}: annotation {ann['id']}")
          for ann in targets]
  rles = [r for r in rles if r is not None]
  rle = None if not rles else rles[0] if len(rles) == 1 else mask_utils.merge(rles,
                                                                              intersect=False)
  boxes = [[float(v) for v in ann["bbox"]] for ann in targets]

  sentences, sent_ids = [], []
  for s in ref["sentences"]:
    if not isinstance(s, dict) or not isinstance(s.get("sent"), str):
      raise ValueError(f"{where}: a sentence lacks its 'sent' string.")
    sentences.append(s["sent"])
    sent_ids.append(int(s.get("sent_id", -1)))

  file_name = image.get("file_name") or "COCO_train2014_%012d.jpg" % ref["image_id"]
  return {
      "image_path": os.path.join(image_dir, file_name),
      "sentences": sentences,
      "sent_ids": sent_ids,
      "mask": RleMask(rle, (height, width)),
      "ref_id": int(ref["ref_id"]),
      "image_id": int(ref["image_id"]),
      "ann_ids": ann_ids,
      "category_ids": category_ids,
      "bbox": _enclosing_box(boxes),
      "boxes": boxes,
      "no_target": no_target,
      "height": height,
      "width": width,
      "split": ref["split"],
      "dataset": dataset,
  }


def _ann_rle(ann, height, width, where):
  """pycocotools' COCO.annToRLE for one annotation, with checks; None if it is empty."""
  segm = ann.get("segmentation")
  if isinstance(segm, list):  # Polygons: one object may have several parts, merged.
    if not segm:
      return None
    for poly in segm:
      if not isinstance(poly, list) or len(poly) < 4 or len(poly) % 2:
        raise ValueError(f"{where}: malformed polygon (need an even number >= 4 of "
                         "coordinates).")
    return mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
  if isinstance(segm, dict) and "counts" in segm and "size" in segm:
    if [int(s) for s in segm["size"]] != [height, width]:
      raise ValueError(f"{where}: RLE size {segm['size']} differs from the image size "
                       f"{[height, width]}.")
    if isinstance(segm["counts"], list):  # Uncompressed RLE (crowd annotations).
      return mask_utils.frPyObjects(segm, height, width)
    return segm  # Compressed RLE.
  raise ValueError(f"{where}: segmentation is neither polygons nor RLE.")


def _enclosing_box(boxes):
  if not boxes:
    return [0.0, 0.0, 0.0, 0.0]
  if len(boxes) == 1:
    return list(boxes[0])
  x0 = min(b[0] for b in boxes)
  y0 = min(b[1] for b in boxes)
  x1 = max(b[0] + b[2] for b in boxes)
  y1 = max(b[1] + b[3] for b in boxes)
  return [x0, y0, x1 - x0, y1 - y0]


def _check_images_exist(examples, image_dir):
  missing = sorted({ex["image_path"] for ex in examples if not os.path.isfile(ex["image_path"])})
  if missing:
    shown = "\n  ".join(missing[:5])
    raise FileNotFoundError(
        f"{len(missing)} image file(s) missing from {image_dir}, e.g.\n  {shown}\n"
        f"They are COCO train2014 images: {_COCO_URL}.")


# ------------------------------------------------------------------------------------------
# python -m jaxris.data.refcoco --root DIR --check


def check(root: str, image_dir: str | None = None) -> tuple[str, bool]:
  """A report of which datasets/splits are present, their counts, and what is missing.

  Returns (report text, whether at least one dataset is complete with all its images).
  """
  lines = [f"data root: {root}"]
  try:
    folder = image_dir_for(root, image_dir)
    lines.append(f"images:    {folder}")
  except FileNotFoundError as e:
    folder = None
    lines.append(f"images:    MISSING. {e}")
  any_complete = False
  for dataset in DATASETS:
    refs_path, instances_path = annotation_files(root, dataset)
    _, _, splits, hint = _row(dataset)
    missing = [p for p in (refs_path, instances_path) if not os.path.isfile(p)]
    if missing:
      lines.append(f"{dataset:16s} MISSING {', '.join(missing)} (from {hint})")
      continue
    try:
      refs, images, _ = _load(refs_path, instances_path)
    except (ValueError, safe_pickle.UnsafePickleError) as e:
      lines.append(f"{dataset:16s} UNREADABLE: {e}")
      continue
    complete = folder is not None
    lines.append(f"{dataset:16s} {refs_path}")
    for split in splits:
      chosen = [r for r in refs if _in_split(r["split"], split, dataset)]
      n_sent = sum(len(r["sentences"]) for r in chosen)
      image_ids = {r["image_id"] for r in chosen}
      status = ""
      if folder is not None:
        names = [images[i].get("file_name") or "COCO_train2014_%012d.jpg" % i
                 for i in image_ids if i in images]
        absent = sum(not os.path.isfile(os.path.join(folder, n)) for n in names)
        absent += len(image_ids) - len(names)
        status = f", {absent} images missing" if absent else ", all images present"
        complete &= absent == 0
      if not chosen:
        status += " (EMPTY split)"
        complete = False
      lines.append(f"  {split:6s} {len(chosen):7d} refs {n_sent:7d} sentences "
                   f"{len(image_ids):6d} images{status}")
    any_complete |= complete
  return "\n".join(lines), any_complete


def main(argv=None):
  parser = argparse.ArgumentParser(
      prog="python -m jaxris.data.refcoco",
      description="Check the official RefCOCO/RefCOCO+/RefCOCOg/gRefCOCO files under a root.")
  parser.add_argument("--root", required=True, help="data root (layout in the module docstring)")
  parser.add_argument("--image-dir", default=None, help="COCO train2014 folder (default: found "
                      "under --root)")
  parser.add_argument("--check", action="store_true", help="report what is present and missing")
  args = parser.parse_args(argv)
  if not args.check:
    parser.error("nothing to do: pass --check")
  if not os.path.isdir(args.root):
    print(f"{args.root} does not exist.", file=sys.stderr)
    return 1
  report, ok = check(args.root, args.image_dir)
  print(report)
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
