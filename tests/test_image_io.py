"""The one image reader: training, evaluation and prediction see the same pixels; every
PIL mode is converted or refused with a clear error."""

import numpy as np
import pytest
from PIL import Image

from jaxris.data import image_io, loader, transforms


def _tokenizer(texts):
  return {"input_ids": np.zeros((len(texts), 4), np.int32)}


def test_16_bit_png_and_array_give_the_same_pixels_for_training_and_prediction(tmp_path):
  # 200 / 257 = 0.78: rounding gives 1 and truncation 0, so the two conversions differ here.
  deep = np.arange(48, dtype=np.uint16).reshape(6, 8) * 1361 + 200
  path = tmp_path / "deep.png"
  Image.fromarray(deep).save(path)  # A 16-bit grayscale PNG.
  want = np.repeat(np.round(deep / 257).astype(np.uint8)[..., None], 3, axis=-1)
  predicted = image_io.read_image(path)  # What jaxris.predict reads.
  np.testing.assert_array_equal(predicted, want)
  np.testing.assert_array_equal(image_io.to_rgb_uint8(deep), want)

  cfg = transforms.preprocess_config("dit", size=8, train_sizes=(8,))
  seen_in_prediction = transforms.preprocess(predicted, None, "x", cfg)["image"]  # RisPredictor
  np.testing.assert_array_equal(transforms.preprocess(deep, None, "x", cfg)["image"],
                                seen_in_prediction)
  mask = np.zeros(deep.shape, np.uint8)
  for source in ({"image_path": str(path)}, {"image": deep}):  # Training and evaluation.
    ds = loader.make_dataset([dict(source, mask=mask, sentences=["x"])], cfg, _tokenizer, 1,
                             train=False, process_index=0, process_count=1)
    np.testing.assert_array_equal(next(ds.as_numpy_iterator())["image"][0], seen_in_prediction)


def test_pil_modes_are_converted(tmp_path):
  rng = np.random.default_rng(0)
  rgba = rng.integers(0, 256, (5, 6, 4), dtype=np.uint8)
  Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
  np.testing.assert_array_equal(image_io.read_image(tmp_path / "a.png"), rgba[..., :3])
  gray = rgba[..., 0]
  Image.fromarray(gray).convert("LA").save(tmp_path / "la.png")
  np.testing.assert_array_equal(image_io.read_image(tmp_path / "la.png"),
                                np.repeat(gray[..., None], 3, -1))
  rgb = Image.fromarray(rgba[..., :3])
  for mode in ("P", "CMYK"):
    rgb.convert(mode).save(tmp_path / f"{mode}.tif")
    want = np.asarray(rgb.convert(mode).convert("RGB"))
    np.testing.assert_array_equal(image_io.read_image(tmp_path / f"{mode}.tif"), want)
  # 32-bit integer images within 16 bits are 16-bit images.
  Image.fromarray(np.full((3, 4), 65535, np.int32), "I").save(tmp_path / "i.tif")
  assert (image_io.read_image(tmp_path / "i.tif") == 255).all()


def test_arrays_are_converted():
  rng = np.random.default_rng(1)
  rgba = rng.integers(0, 256, (5, 6, 4), dtype=np.uint8)
  out = image_io.to_rgb_uint8(rgba)
  assert out.flags.c_contiguous
  np.testing.assert_array_equal(out, rgba[..., :3])
  np.testing.assert_array_equal(image_io.to_rgb_uint8(rgba[..., :1]),
                                np.repeat(rgba[..., :1], 3, -1))
  np.testing.assert_array_equal(image_io.to_rgb_uint8(rgba[..., :2]),
                                np.repeat(rgba[..., :1], 3, -1))
  assert image_io.to_rgb_uint8(np.array([[0, 128, 65535]], np.uint16)).tolist() == [
      [[0] * 3, [0] * 3, [255] * 3]]


def test_bad_images_are_clear_errors(tmp_path):
  (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
  with pytest.raises(image_io.ImageError, match="cannot read image .*bad.jpg"):
    image_io.read_image(tmp_path / "bad.jpg")
  with pytest.raises(image_io.ImageError, match="image not found: .*nope.png"):
    image_io.read_image(tmp_path / "nope.png")
  Image.fromarray(np.zeros((3, 4), np.float32), "F").save(tmp_path / "f.tif")
  with pytest.raises(image_io.ImageError, match="f.tif: floating-point image"):
    image_io.read_image(tmp_path / "f.tif")
  Image.fromarray(np.full((3, 4), 70000, np.int32), "I").save(tmp_path / "big.tif")
  with pytest.raises(image_io.ImageError, match="big.tif: .*outside 16 bits"):
    image_io.read_image(tmp_path / "big.tif")
  with pytest.raises(image_io.ImageError, match="must be uint8 .*float32"):
    image_io.to_rgb_uint8(np.zeros((4, 4, 3), np.float32))
  with pytest.raises(image_io.ImageError, match="shape"):
    image_io.to_rgb_uint8(np.zeros((4, 4, 5), np.uint8))
  with pytest.raises(image_io.ImageError, match="empty"):
    image_io.to_rgb_uint8(np.zeros((0, 4, 3), np.uint8))
