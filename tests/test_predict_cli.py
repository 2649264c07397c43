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


@pytest.fixture(scope="module")
def evf_weights(tmp_path_factory):
  """Tiny random EVF-SAM weights as convert/evf_sam.py writes them, with a tokenizer trained here."""
  from evf_reference import write_tokenizer
  from jaxris.models.beit3 import BEiT3Config
  from jaxris.models.ris.evf import EvfConfig
  from jaxris.models.sam.sam import sam_config
  from jaxris.weights import evf_sam, store

  cfg = EvfConfig(sam=sam_config("vit_b", img_size=256, embed_dim=32, depth=1, num_heads=2),
                  beit3=BEiT3Config.base(encoder_embed_dim=32, encoder_attention_heads=2, encoder_ffn_embed_dim=64,
                                         encoder_layers=1, vocab_size=200))
  rng = np.random.default_rng(0)
  params = {k: rng.normal(0, 0.2, s).astype(np.float32) for k, s in store.param_shapes(evf_sam.abstract_model(cfg)).items()}
  directory = tmp_path_factory.mktemp("evf_weights")
  evf_sam.save(str(directory), cfg, params)
  write_tokenizer(directory)
  return str(directory)


def test_evf_text_with_and_without_sam_prompts(setup, evf_weights):
  root, _, image, _ = setup
  for extra, out in [([], root / "evf"), (["--point", "70,40", "--point", "10,10,0", "--box", "5,5,120,80"], root / "evf_p")]:
    assert predict.main(["--weights", evf_weights, "--image", image, "--text", "zebra top left", "--out", str(out)]
                        + extra) == 0
    logits = np.load(out / "scene_logits.npy")
    assert logits.dtype == np.float32 and logits.shape == (1, 90, 140) and np.isfinite(logits).all()
    np.testing.assert_array_equal(np.asarray(Image.open(out / "scene_mask.png")), np.where(logits[0] > 0, 255, 0))
    scores = json.loads((out / "scene_scores.json").read_text())
    assert scores["text"] == "zebra top left" and scores["threshold"] == 0.0
  assert not np.array_equal(np.load(root / "evf" / "scene_logits.npy"), logits), "the point/box prompts count"


def test_evf_and_sam_weights_errors(setup, evf_weights, capsys):
  root, weights, image, _ = setup
  cases = [(["--weights", evf_weights], "non-empty --text"),
           (["--weights", evf_weights, "--text", "sky", "--multimask"], "one mask"),
           (["--weights", weights, "--text", "sky"], "holds plain SAM")]
  for argv, message in cases:
    assert predict.main(argv + ["--image", image, "--out", str(root / "e")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
