"""python -m jaxris.predict on many images: --image-dir / repeated --image, one corrupt file reported and
skipped, a summary, exit code 1 when any input failed (0 when none did), each image encoded once."""

import json

import numpy as np
import pytest
from PIL import Image

from jaxris import predict
from jaxris.inference.sam_predictor import SamPredictor
from jaxris.models.functional import param_shapes
from jaxris.models.sam.sam import sam_config
from jaxris.weights import sam as sam_weights


def _random_params(model, seed):
  rng = np.random.default_rng(seed)
  return {k: rng.normal(0, 0.2, s).astype(np.float32) for k, s in param_shapes(model).items()}


@pytest.fixture(scope="module")
def sam_dir(tmp_path_factory):
  """Small random SAM weights as the converters write them (built without running the initialisers)."""
  cfg = sam_config("vit_b", img_size=64, embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,), window_size=4)
  directory = str(tmp_path_factory.mktemp("sam_weights"))
  sam_weights.save(directory, cfg, _random_params(sam_weights.abstract_model(cfg), 5))
  return directory


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
  """20 images (two sizes, one of them 16-bit grayscale), one of them corrupt, and a text file."""
  root = tmp_path_factory.mktemp("photos")
  rng = np.random.default_rng(0)
  for i in range(20):
    path = root / f"img{i:02d}.png"
    if i == 7:
      (root / "img07.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is no jpeg")  # corrupt
    elif i == 11:
      Image.fromarray(rng.integers(0, 65535, (40, 50), dtype=np.uint16)).save(path)
    else:
      Image.fromarray(rng.integers(0, 255, (40, 50) if i % 2 else (36, 60), dtype=np.uint8).repeat(3).reshape(
          (40, 50, 3) if i % 2 else (36, 60, 3))).save(path)
  (root / "notes.txt").write_text("not an image: ignored by --image-dir")
  return root


def test_directory_with_one_corrupt_image(sam_dir, photos, tmp_path, capsys, monkeypatch):
  encodes = []
  set_image = SamPredictor.set_image
  monkeypatch.setattr(SamPredictor, "set_image", lambda self, image: (encodes.append(image.shape), set_image(self, image)))
  out = tmp_path / "out"
  code = predict.main(["--weights", sam_dir, "--image-dir", str(photos), "--point", "20,15", "--out", str(out)])
  captured = capsys.readouterr()
  assert code == predict.EXIT_SOME_FAILED == 1
  assert len(list(out.glob("*_mask.png"))) == 19 and not (out / "img07_mask.png").exists()
  assert len(encodes) == 19, "each readable image is encoded exactly once"
  errors = [line for line in captured.err.splitlines() if "error:" in line]
  assert len(errors) == 1 and "img07.jpg" in errors[0] and "cannot read image" in errors[0], captured.err
  assert "20 images: 19 written" in captured.out and "1 failed" in captured.out
  summary = json.loads((out / "summary.json").read_text())
  assert summary["images"] == 20 and len(summary["written"]) == 19 and list(summary["failed"]) == [str(photos / "img07.jpg")]

  # The same answer as the single-image command for each image.
  single = tmp_path / "single"
  assert predict.main(["--weights", sam_dir, "--image", str(photos / "img03.png"), "--point", "20,15",
                       "--out", str(single)]) == 0
  for suffix in ("mask.png",):
    np.testing.assert_array_equal(np.asarray(Image.open(out / f"img03_{suffix}")),
                                  np.asarray(Image.open(single / f"img03_{suffix}")))
  np.testing.assert_array_equal(np.load(out / "img03_logits.npy"), np.load(single / "img03_logits.npy"))


def test_repeated_image_flag_and_per_image_errors(sam_dir, photos, tmp_path, capsys):
  out = tmp_path / "out"
  argv = ["--weights", sam_dir, "--image", str(photos / "img01.png"), "--image", str(photos / "img02.png"),
          "--box", "2,2,48,34", "--out", str(out)]
  assert predict.main(argv) == 0
  assert "2 images: 2 written" in capsys.readouterr().out
  assert sorted(p.name for p in out.glob("*_mask.png")) == ["img01_mask.png", "img02_mask.png"]
  # img02 is 60x36: the box does not fit it; a second file named img01 would overwrite the first's outputs.
  other = tmp_path / "other"
  other.mkdir()
  Image.open(photos / "img01.png").save(other / "img01.bmp")
  argv = ["--weights", sam_dir, "--image", str(photos / "img01.png"), "--image", str(photos / "img02.png"),
          "--image", str(other / "img01.bmp"), "--box", "2,2,48,39", "--out", str(tmp_path / "o2")]
  assert predict.main(argv) == 1
  captured = capsys.readouterr()
  assert "outside the 60x36 image" in captured.err and "would overwrite" in captured.err
  assert "3 images: 1 written" in captured.out and "2 failed" in captured.out


@pytest.mark.parametrize("argv,message", [
    (["--image-dir", "/nonexistent/dir", "--point", "1,1"], "is not a directory"),
    (["--point", "1,1"], "give an image"),
    (["--image-dir", "PHOTOS", "--batch-size", "0", "--point", "1,1"], "--batch-size must be at least 1"),
    (["--image-dir", "PHOTOS", "--text", "a cat"], "holds plain SAM"),
    (["--image-dir", "PHOTOS"], "at least one prompt"),
])
def test_usage_errors_write_nothing(sam_dir, photos, tmp_path, capsys, argv, message):
  out = tmp_path / "out"
  argv = [str(photos) if a == "PHOTOS" else a for a in argv]
  assert predict.main(["--weights", sam_dir, "--out", str(out)] + argv) == 2
  err = capsys.readouterr().err.strip()
  assert message in err and len(err.splitlines()) == 1, err
  assert not out.exists()


def test_empty_directory(sam_dir, tmp_path, capsys):
  (tmp_path / "empty").mkdir()
  assert predict.main(["--weights", sam_dir, "--image-dir", str(tmp_path / "empty"), "--point", "1,1",
                       "--out", str(tmp_path / "o")]) == 2
  assert "no image files" in capsys.readouterr().err


def test_evf_text_batches_equal_single_predictions(photos, tmp_path, capsys):
  """EVF-SAM text-only prompts go through predict_batch (2 images at a time here): same logits as one by one."""
  from evf_reference import write_tokenizer
  from jaxris.models.beit3 import BEiT3Config
  from jaxris.models.ris.evf import EvfConfig
  from jaxris.weights import evf_sam

  cfg = EvfConfig(sam=sam_config("vit_b", img_size=64, embed_dim=32, depth=1, num_heads=2, window_size=4,
                                 global_attn_indexes=()),
                  beit3=BEiT3Config.base(encoder_embed_dim=32, encoder_attention_heads=2, encoder_ffn_embed_dim=64,
                                         encoder_layers=1, vocab_size=200))
  weights = tmp_path / "evf"
  weights.mkdir()
  evf_sam.save(str(weights), cfg, _random_params(evf_sam.abstract_model(cfg), 1))
  write_tokenizer(weights)
  images = [str(photos / f"img{i:02d}.png") for i in (1, 2, 3)]
  argv = ["--weights", str(weights), "--text", "zebra top left", "--batch-size", "2"]
  assert predict.main(argv + sum((["--image", p] for p in images), []) + ["--out", str(tmp_path / "many")]) == 0
  assert predict.main(argv + ["--image", images[1], "--out", str(tmp_path / "one")]) == 0
  capsys.readouterr()
  np.testing.assert_allclose(np.load(tmp_path / "many" / "img02_logits.npy"),
                             np.load(tmp_path / "one" / "img02_logits.npy"), atol=1e-4)
  assert json.loads((tmp_path / "many" / "img03_scores.json").read_text())["text"] == "zebra top left"
