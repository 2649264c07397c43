"""The RefCOCO-family reader on a tiny root written in the official formats."""

import json
import os
import pickle
import shutil

import numpy as np
import pytest
from pycocotools.coco import COCO

import refcoco_fixture as fx
from jaxris.data import refcoco, safe_pickle


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  return fx.write_root(str(tmp_path_factory.mktemp("refer")))


@pytest.fixture(scope="module")
def coco(root):
  return COCO(os.path.join(root, "refcoco", "instances.json"))


ALL_SPLITS = [(d, s) for d in refcoco.DATASETS for s in refcoco.SPLITS[d]]


@pytest.mark.parametrize("dataset,split", ALL_SPLITS)
def test_counts_ids_and_sentences_in_file_order(root, dataset, split):
  examples = refcoco.read_split(root, dataset, split)
  want = fx.expected(dataset, split)
  assert [(e["ref_id"], e["ann_ids"], e["sentences"]) for e in examples] == want
  for ex in examples:
    assert ex["dataset"] == dataset and ex["split"] == split
    assert os.path.isfile(ex["image_path"])
    assert ex["image_path"].endswith("COCO_train2014_%012d.jpg" % ex["image_id"])
    assert len(ex["sent_ids"]) == len(ex["sentences"])


def test_split_counts_per_dataset(root):
  counts = {(d, s): (len(exs), sum(len(e["sentences"]) for e in exs))
            for d, s in ALL_SPLITS for exs in [refcoco.read_split(root, d, s)]}
  assert counts[("refcoco", "train")] == (3, 5)
  assert counts[("refcoco", "testA")] == (1, 3)
  assert counts[("refcoco+", "testB")] == (1, 3)
  assert counts[("refcocog_umd", "test")] == (1, 2)
  assert counts[("grefcoco", "train")] == (2, 3)


def test_python2_pickle_strings_and_unicode(root):
  train = refcoco.read_split(root, "refcoco", "train")
  assert train[2]["sentences"] == ["caf\u00e9 customer"]  # py2 unicode object.
  assert train[0]["sentences"][0] == "the man on the left"  # py2 byte string.
  assert isinstance(train[0]["sentences"][0], str)


@pytest.mark.parametrize("dataset,split", [(d, s) for d, s in ALL_SPLITS if d != "grefcoco"])
def test_masks_equal_pycocotools_annToMask(root, coco, dataset, split):
  for ex in refcoco.read_split(root, dataset, split):
    ann = coco.loadAnns(ex["ann_ids"])[0]
    want = coco.annToMask(ann)
    got = np.asarray(ex["mask"])
    assert got.dtype == np.uint8 and got.shape == (ex["height"], ex["width"])
    np.testing.assert_array_equal(got, want)
    assert got.sum() > 0
    assert ex["bbox"] == ann["bbox"] and ex["category_ids"] == [ann["category_id"]]


def test_polygon_crowd_rle_and_compressed_rle_masks(root, coco):
  by_ann = {ex["ann_ids"][0]: ex for split in refcoco.SPLITS["refcoco"]
            for ex in refcoco.read_split(root, "refcoco", split)}
  np.testing.assert_array_equal(np.asarray(by_ann[103]["mask"]), fx._crowd_mask())
  np.testing.assert_array_equal(np.asarray(by_ann[104]["mask"]), fx._compressed_mask())
  # Multi-part polygon: the union of the parts, larger than either part alone.
  parts = [coco.annToMask(dict(coco.anns[101], segmentation=[p]))
           for p in coco.anns[101]["segmentation"]]
  np.testing.assert_array_equal(np.asarray(by_ann[101]["mask"]), parts[0] | parts[1])
  assert np.asarray(by_ann[101]["mask"]).sum() > max(p.sum() for p in parts)


def test_grefcoco_multi_target_union_and_no_target(root, coco):
  train = refcoco.read_split(root, "grefcoco", "train")
  multi, empty = train
  want = coco.annToMask(coco.anns[101]) | coco.annToMask(coco.anns[102])
  np.testing.assert_array_equal(np.asarray(multi["mask"]), want)
  assert multi["ann_ids"] == [101, 102] and multi["category_ids"] == [1, 2]
  assert multi["boxes"] == [coco.anns[101]["bbox"], coco.anns[102]["bbox"]]
  assert multi["bbox"] == [2.0, 3.0, 35.0, 20.0]  # Encloses both boxes.
  assert not multi["no_target"]
  assert empty["no_target"] and empty["ann_ids"] == [] and empty["category_ids"] == []
  got = np.asarray(empty["mask"])
  assert got.shape == (30, 40) and got.dtype == np.uint8 and not got.any()
  assert empty["bbox"] == [0.0, 0.0, 0.0, 0.0]
  crowd_and_polygon = refcoco.read_split(root, "grefcoco", "testB")[0]
  np.testing.assert_array_equal(np.asarray(crowd_and_polygon["mask"]),
                                coco.annToMask(coco.anns[103]) | coco.annToMask(coco.anns[106]))


def test_malicious_pickle_is_rejected_and_runs_nothing(tmp_path):
  marker = tmp_path / "pwned"

  class Evil:
    def __reduce__(self):
      return (os.system, (f"touch {marker}",))

  for protocol in (0, 2, 5):
    bad_root = tmp_path / f"root{protocol}"
    fx.write_root(str(bad_root), datasets=("refcoco",))
    with open(bad_root / "refcoco" / "refs(unc).p", "wb") as f:
      pickle.dump([{"ref_id": 0}, Evil()], f, protocol=protocol)
    with pytest.raises(safe_pickle.UnsafePickleError, match=r"system.*could run code"):
      refcoco.read_split(str(bad_root), "refcoco", "train")
  assert not marker.exists()
  # Any global, even a harmless-looking one, is refused; plain containers load.
  def load(data):
    path = tmp_path / "file.p"
    path.write_bytes(data)
    return safe_pickle.load(path)

  with pytest.raises(safe_pickle.UnsafePickleError, match="builtins.eval"):
    load(b"cbuiltins\neval\n(S'1+1'\ntR.")
  with pytest.raises(safe_pickle.UnsafePickleError, match="collections.OrderedDict"):
    import collections
    load(pickle.dumps(collections.OrderedDict(a=1)))
  with pytest.raises(safe_pickle.UnsafePickleError, match="persistent id"):
    load(b"(P1\nt.")
  assert load(pickle.dumps({"a": [1, 2.5, "x", (None, True)], "b": {3}})) == {
      "a": [1, 2.5, "x", (None, True)], "b": {3}}


def test_corrupt_pickle_is_a_clear_error(tmp_path):
  bad = fx.write_root(str(tmp_path), datasets=("refcoco",))
  path = os.path.join(bad, "refcoco", "refs(unc).p")
  data = open(path, "rb").read()
  with open(path, "wb") as f:
    f.write(data[:len(data) // 2])
  with pytest.raises(ValueError, match=r"refs\(unc\)\.p: not a readable pickle"):
    refcoco.read_split(bad, "refcoco", "train")


def test_missing_files_are_named_with_their_source(tmp_path):
  root = fx.write_root(str(tmp_path), datasets=("refcoco",))
  with pytest.raises(FileNotFoundError, match=r"refs\(umd\)\.p.*refcocog\.zip"):
    refcoco.read_split(root, "refcocog_umd", "train")
  with pytest.raises(FileNotFoundError, match=r"grefs\(unc\)\.json.*henghuiding/gRefCOCO"):
    refcoco.read_split(root, "grefcoco", "val")
  os.remove(os.path.join(root, "refcoco", "instances.json"))
  with pytest.raises(FileNotFoundError, match=r"refcoco/instances\.json"):
    refcoco.read_split(root, "refcoco", "train")


def test_missing_images_and_image_dir_layouts(tmp_path):
  root = fx.write_root(str(tmp_path), datasets=("refcoco",))
  refer_dir = os.path.join(root, "images", "mscoco", "images", "train2014")
  # The gRefCOCO/ReLA layout <root>/images/train2014 is found when the refer one is absent.
  shutil.move(refer_dir, os.path.join(root, "images", "train2014"))
  ex = refcoco.read_split(root, "refcoco", "val")[0]
  assert ex["image_path"] == os.path.join(root, "images", "train2014", "COCO_train2014_%012d.jpg"
                                          % 25)
  os.remove(ex["image_path"])
  with pytest.raises(FileNotFoundError, match=r"(?s)1 image file\(s\) missing.*train2014\.zip"):
    refcoco.read_split(root, "refcoco", "val")
  assert refcoco.read_split(root, "refcoco", "val", check_images=False)[0]["image_id"] == 25
  custom = tmp_path / "elsewhere"
  with pytest.raises(FileNotFoundError, match="elsewhere does not exist"):
    refcoco.read_split(root, "refcoco", "val", image_dir=str(custom))
  shutil.rmtree(os.path.join(root, "images"))
  with pytest.raises(FileNotFoundError, match=r"images/mscoco/images/train2014"):
    refcoco.read_split(root, "refcoco", "val")


def test_bad_dataset_split_and_corrupt_annotations(root, tmp_path):
  with pytest.raises(ValueError, match="Unknown dataset 'refclef'"):
    refcoco.read_split(root, "refclef", "train")
  with pytest.raises(ValueError, match="Unknown split 'test' for refcoco; it has train, val"):
    refcoco.read_split(root, "refcoco", "test")
  bad = fx.write_root(str(tmp_path), datasets=("grefcoco",))
  path = os.path.join(bad, "grefcoco", "grefs(unc).json")
  grefs = json.load(open(path))
  grefs[0]["ann_id"] = [101, 999]
  json.dump(grefs, open(path, "w"))
  with pytest.raises(ValueError, match="ann_id 999 is not in"):
    refcoco.read_split(bad, "grefcoco", "train")
  inst_path = os.path.join(bad, "grefcoco", "instances.json")
  instances = json.load(open(inst_path))
  instances["annotations"][3]["segmentation"]["size"] = [5, 5]
  json.dump(instances, open(inst_path, "w"))
  grefs[0]["ann_id"] = [101]
  json.dump(grefs, open(path, "w"))
  with pytest.raises(ValueError, match=r"annotation 104: RLE size \[5, 5\]"):
    refcoco.read_split(bad, "grefcoco", "val")


def test_check_cli_reports_counts_and_missing(tmp_path, capsys):
  root = fx.write_root(str(tmp_path), datasets=("refcoco", "grefcoco"))
  assert refcoco.main(["--root", root, "--check"]) == 0
  out = capsys.readouterr().out
  lines = out.splitlines()
  refcoco_at = next(i for i, line in enumerate(lines) if line.startswith("refcoco "))
  assert "train        3 refs       5 sentences      1 images, all images present" in (
      lines[refcoco_at + 1])
  assert "testA        1 refs       3 sentences" in lines[refcoco_at + 3]
  assert any(line.startswith("refcoco+") and "MISSING" in line and "refcoco+.zip" in line
             for line in lines)
  assert any(line.startswith("refcocog_umd") and "MISSING" in line and "refs(umd).p" in line
             for line in lines)
  grefcoco_at = next(i for i, line in enumerate(lines) if line.startswith("grefcoco"))
  assert "MISSING" not in lines[grefcoco_at]
  assert "train        2 refs       3 sentences" in lines[grefcoco_at + 1]
  os.remove(os.path.join(root, "images", "mscoco", "images", "train2014",
                         "COCO_train2014_%012d.jpg" % 42))
  assert refcoco.main(["--root", root, "--check"]) == 1  # No dataset is complete any more.
  assert "1 images missing" in capsys.readouterr().out


def test_rle_mask_behaves_like_an_array(root):
  ex = refcoco.read_split(root, "refcoco", "testB")[0]
  m = ex["mask"]
  assert m.shape == (32, 32) and m.dtype == np.uint8 and m.ndim == 2
  assert np.asarray(m, np.float32).dtype == np.float32
  assert np.array_equal(m, np.asarray(m)) and "area=126" in repr(m)


def test_tfds_builder_matches_read_split(tmp_path):
  import tensorflow_datasets as tfds
  from jaxris.data import refcoco_tfds
  root = fx.write_root(str(tmp_path / "manual"), datasets=("grefcoco",))
  builder = refcoco_tfds.RefCocoJaxris(config="grefcoco", data_dir=str(tmp_path / "tfds"))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=root))
  assert {s: builder.info.splits[s].num_examples for s in refcoco.SPLITS["grefcoco"]} == {
      "train": 2, "val": 1, "testA": 1, "testB": 1}
  for split in ("train", "testB"):  # Multi-target, no-target, grayscale JPEG + crowd RLE.
    want = {ex["ref_id"]: ex for ex in refcoco.read_split(root, "grefcoco", split)}
    got = list(tfds.as_numpy(builder.as_dataset(split=split)))
    assert sorted(int(ex["ref_id"]) for ex in got) == sorted(want)
    for ex in got:
      ref = want[int(ex["ref_id"])]
      np.testing.assert_array_equal(ex["mask"][:, :, 0], np.asarray(ref["mask"]))
      assert ex["image"].shape == (ref["height"], ref["width"], 3)
      assert [s.decode() for s in ex["sentences"]] == ref["sentences"]
      assert list(ex["ann_ids"]) == ref["ann_ids"] and bool(ex["no_target"]) == ref["no_target"]
      np.testing.assert_allclose(ex["bbox"], ref["bbox"])
  other = tmp_path / "other"  # A manual directory without the gRefCOCO files.
  (other / "refcoco").mkdir(parents=True)
  with pytest.raises(FileNotFoundError, match=r"grefs\(unc\)\.json.*henghuiding/gRefCOCO"):
    refcoco_tfds.RefCocoJaxris(config="grefcoco", data_dir=str(tmp_path / "t2")
                               ).download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(other)))
