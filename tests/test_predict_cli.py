"""python -m jaxris.predict: outputs, and one-line errors with exit code 2 for bad input."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from jaxris import predict
from jaxris.weights import sam as sam_weights
from sam_fixtures import official_sam


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("predict")
  official = official_sam(embed_dim=64, depth=2, num_heads=2, global_attn_indexes=(1,), img_size=256, seed=2)
  cfg, params = sam_weights.convert_state_dict({k: v.numpy() for k, v in official.state_dict().items()})
  weights = str(root / "weights")
  sam_weights.save(weights, cfg, params)
  rng = np.random.default_rng(0)
  image = str(root / "scene.png")
  Image.fromarray(rng.integers(0, 255, (90, 140, 3), dtype=np.uint8)).save(image)
  gray16 = str(root / "gray16.png")
  Image.fromarray(rng.integers(0, 65535, (60, 50), dtype=np.uint16)).save(gray16)
  return root, weights, image, gray16


@pytest.mark.parametrize("multimask,k", [(False, 1), (True, 3)])
def test_outputs(setup, multimask, k):
  root, weights, image, _ = setup
  out = root / f"out{k}"
  argv = ["--weights", weights, "--image", image, "--point", "70,40", "--point", "10,10,0", "--box", "5,5,120,80",
          "--out", str(out)] + (["--multimask"] if multimask else [])
  assert predict.main(argv) == 0
  logits = np.load(out / "scene_logits.npy")
  assert logits.dtype == np.float32 and logits.shape == (k, 90, 140)
  mask = np.asarray(Image.open(out / "scene_mask.png"))
  scores = json.loads((out / "scene_scores.json").read_text())
  assert len(scores["iou_predictions"]) == k
  best = int(np.argmax(scores["iou_predictions"]))
  np.testing.assert_array_equal(mask, np.where(logits[best] > 0, 255, 0))
  assert np.asarray(Image.open(out / "scene_overlay.png")).shape == (90, 140, 3)


def test_grayscale_16bit_image_is_converted(setup):
  root, weights, _, gray16 = setup
  assert predict.main(["--weights", weights, "--image", gray16, "--point", "20,20", "--out", str(root / "g")]) == 0
  assert np.load(root / "g" / "gray16_logits.npy").shape == (1, 60, 50)


@pytest.mark.parametrize("extra,message", [
    (["--point", "500,10"], "outside"),
    (["--point", "1,2,3,4"], "needs 2 or 3"),
    (["--point", "a,b"], "not comma-separated numbers"),
    (["--point", "5,5,7"], "label must be 1"),
    (["--box", "50,50,10,10"], "X0 < X1"),
    (["--box", "0,0,200,80"], "outside"),
    ([], "at least one prompt"),
])
def test_bad_prompts(setup, capsys, extra, message):
  root, weights, image, _ = setup
  assert predict.main(["--weights", weights, "--image", image, "--out", str(root / "x")] + extra) == 2
  err = capsys.readouterr().err.strip()
  assert message in err and len(err.splitlines()) == 1, err


def test_bad_files(setup, capsys, tmp_path):
  root, weights, image, _ = setup
  broken = tmp_path / "broken.jpg"
  broken.write_bytes(b"not an image at all")
  cases = [(["--weights", weights, "--image", str(tmp_path / "nope.png")], "image not found"),
           (["--weights", weights, "--image", str(broken)], "cannot read image"),
           (["--weights", str(tmp_path / "noweights"), "--image", image], "convert/sam.py")]
  for argv, message in cases:
    assert predict.main(argv + ["--point", "1,1", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_no_traceback_from_the_command_line(setup):
  root, weights, image, _ = setup
  run = subprocess.run([sys.executable, "-m", "jaxris.predict", "--weights", weights, "--image", image,
                        "--point", "1e9,3", "--out", str(root / "y")], capture_output=True, text=True)
  assert run.returncode == 2
  assert "Traceback" not in run.stderr and "outside" in run.stderr
