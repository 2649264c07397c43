"""TFDS builder for RefCOCO, RefCOCO+, RefCOCOg (umd, google) and gRefCOCO.

The manual download directory is the data root of `jaxris.data.refcoco` (layout in that
module's docstring); examples are read with `refcoco.read_split`, so they are exactly
what the Python API returns, one per ref:

  image         the COCO JPEG, stored as is (decodes to uint8 HxWx3)
  mask          uint8 HxWx1 in {0, 1} (PNG): union of the targets, zeros for no target
  sentences     the ref's expressions in file order; sent_ids alongside
  ref_id, image_id, ann_ids, category_ids
  bbox          float32 [x, y, w, h] in pixels (module refcoco's `bbox`)
  no_target     bool
  file_name     the image's file name

    import tensorflow_datasets as tfds
    from jaxris.data import refcoco_tfds  # Registers the builder.
    builder = refcoco_tfds.RefCocoJaxris(config="refcoco", data_dir=DATA_DIR)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=ROOT))
    ds = builder.as_dataset(split="val")

The class is not called RefCoco so that its name, ref_coco_jaxris, does not collide with
TFDS's own `ref_coco` (big_vision's datasets/refcoco builder avoids the same clash).
"""

import os

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from jaxris.data import refcoco

__all__ = ["RefCocoJaxris", "CONFIG_TO_DATASET"]

# TFDS config names must be identifiers: "refcoco+" becomes "refcocoplus".
CONFIG_TO_DATASET = {
    "refcoco": "refcoco",
    "refcocoplus": "refcoco+",
    "refcocog_umd": "refcocog_umd",
    "refcocog_google": "refcocog_google",
    "grefcoco": "grefcoco",
}


class RefCocoJaxris(tfds.core.GeneratorBasedBuilder):
  """RefCOCO-family datasets from the official files, one example per ref."""

  # TFDS finds a builder's folder (for checksum files) through importlib_resources, which
  # tensorflow-datasets 4.9 only installs on Python < 3.9; naming the file directly avoids
  # that import.
  code_path = epath.Path(__file__)
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name=name, description=f"{dataset} from the official files.")
      for name, dataset in CONFIG_TO_DATASET.items()
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Put the official files in the manual directory (the refer API's data/README.md layout):
    refcoco/refs(unc).p, refcoco/instances.json, refcoco+/refs(unc).p,
    refcoco+/instances.json, refcocog/refs(umd).p, refcocog/refs(google).p,
    refcocog/instances.json: refcoco.zip, refcoco+.zip, refcocog.zip from
      https://bvisionweb1.cs.unc.edu/licheng/referit/data/ (mirrors:
      https://github.com/lichengunc/refer/issues/14);
    grefcoco/grefs(unc).json, grefcoco/instances.json: https://github.com/henghuiding/gRefCOCO;
    images/mscoco/images/train2014/*.jpg (or images/train2014/*.jpg): COCO train2014,
      http://images.cocodataset.org/zips/train2014.zip.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="Referring expressions with masks: " + self.builder_config.name,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
            "mask": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
            "sentences": tfds.features.Sequence(tfds.features.Text()),
            "sent_ids": tfds.features.Sequence(np.int64),
            "ref_id": np.int64,
            "image_id": np.int64,
            "ann_ids": tfds.features.Sequence(np.int64),
            "category_ids": tfds.features.Sequence(np.int64),
            "bbox": tfds.features.Tensor(shape=(4,), dtype=np.float32),
            "no_target": np.bool_,
            "file_name": tfds.features.Text(),
        }),
        supervised_keys=None,
        homepage="https://github.com/lichengunc/refer",
    )

  def _split_generators(self, dl_manager):
    root = str(dl_manager.manual_dir)
    dataset = CONFIG_TO_DATASET[self.builder_config.name]
    missing = [p for p in refcoco.annotation_files(root, dataset) if not os.path.isfile(p)]
    if missing:  # Fail before any work, naming the files and where they come from.
      raise FileNotFoundError(
          f"Missing {', '.join(missing)} in the manual directory. "
          f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    refcoco.image_dir_for(root)
    return {split: self._generate_examples(root, dataset, split)
            for split in refcoco.SPLITS[dataset]}

  def _generate_examples(self, root, dataset, split):
    for ex in refcoco.read_split(root, dataset, split):
      yield ex["ref_id"], {
          "image": ex["image_path"],
          "mask": np.asarray(ex["mask"])[:, :, None],
          "sentences": ex["sentences"],
          "sent_ids": ex["sent_ids"],
          "ref_id": ex["ref_id"],
          "image_id": ex["image_id"],
          "ann_ids": ex["ann_ids"],
          "category_ids": ex["category_ids"],
          "bbox": np.asarray(ex["bbox"], np.float32),
          "no_target": ex["no_target"],
          "file_name": os.path.basename(ex["image_path"]),
      }
