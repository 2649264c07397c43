"""End to end against the official SamPredictor at the original size of a real, non-square photo."""

import numpy as np
import pytest
import skimage.data
from segment_anything import SamPredictor as OfficialPredictor

from jaxris.inference.sam_predictor import SamPredictor
from parity import assert_close
from sam_fixtures import convert, official_sam


@pytest.fixture(scope="module")
def predictors():
  official = official_sam(embed_dim=96, depth=2, num_heads=4, global_attn_indexes=(1,), seed=3)
  image = skimage.data.chelsea()  # 300 x 451 RGB: non-square, upscaled to 681 x 1024
  ref, ours = OfficialPredictor(official), SamPredictor(convert(official))
  ref.set_image(image)
  ours.set_image(image)
  return ref, ours, image


def test_image_embedding(predictors):
  ref, ours, _ = predictors
  assert ours.input_size == tuple(ref.input_size) and ours.original_size == tuple(ref.original_size)
  assert_close(np.asarray(ours.features).transpose(0, 3, 1, 2), ref.get_image_embedding(), what="image embedding")


@pytest.mark.parametrize("multimask", [False, True])
@pytest.mark.parametrize("prompt", ["points", "box", "points+box"])
def test_predict_logits_at_original_size(predictors, prompt, multimask):
  ref, ours, image = predictors
  kwargs = {}
  if "points" in prompt:
    kwargs.update(point_coords=np.array([[200.0, 150.0], [60.5, 40.0], [400.0, 280.0]]),
                  point_labels=np.array([1, 0, 1]))
  if "box" in prompt:
    kwargs["box"] = np.array([30.0, 20.0, 420.0, 290.0])
  ref_masks, ref_iou, ref_low = ref.predict(multimask_output=multimask, return_logits=True, **kwargs)
  masks, iou, low = ours.predict(multimask_output=multimask, return_logits=True, **kwargs)
  assert masks.shape == ref_masks.shape == (3 if multimask else 1,) + image.shape[:2]
  assert_close(masks, ref_masks, what="mask logits at the original size")
  assert_close(iou, ref_iou, what="iou")
  assert_close(low, ref_low, what="low-res logits")


def test_mask_input_round_trip(predictors):
  ref, ours, _ = predictors
  point = dict(point_coords=np.array([[120.0, 100.0]]), point_labels=np.array([1]))
  _, _, ref_low = ref.predict(multimask_output=False, **point)
  ref_masks, _, _ = ref.predict(mask_input=ref_low, multimask_output=False, return_logits=True, **point)
  masks, _, _ = ours.predict(mask_input=ref_low, multimask_output=False, return_logits=True, **point)
  assert_close(masks, ref_masks, what="logits with a mask prompt")
  binary, _, _ = ours.predict(mask_input=ref_low, multimask_output=False, **point)
  assert binary.dtype == bool
  np.testing.assert_array_equal(binary, masks > 0)
