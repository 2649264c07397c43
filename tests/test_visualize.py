"""The pictures people look at: overlays and the ground-truth / prediction comparison."""

import numpy as np

from jaxris.visualize import GREEN, comparison, overlay


def test_overlay_tints_the_mask_and_draws_its_outline():
  image = np.full((10, 10, 3), 100, np.uint8)
  mask = np.zeros((10, 10), bool)
  mask[2:8, 2:8] = True
  out = overlay(image, mask)
  assert (out[0, 0] == 100).all() and tuple(out[2, 2]) == (30, 144, 255) and not (out[5, 5] == 100).all()


def test_comparison_is_enlarged_with_both_panels_and_a_caption():
  image = np.zeros((64, 80, 3), np.uint8)
  truth = np.zeros((64, 80), bool)
  truth[10:30, 10:30] = True
  out = comparison(image, truth, np.zeros_like(truth), "the big red circle", min_side=320)
  assert out.dtype == np.uint8 and out.shape[1] == 2 * 80 * 5 + 8  # 64 -> 320: x5, two panels and a gap
  header = out.shape[0] - 64 * 5
  assert header >= 40 and (out[:header] < 128).any()  # the caption's text
  left, right = out[header:, :400], out[header:, 408:]
  assert (np.all(left == GREEN, axis=-1)).any() and not (np.all(right == GREEN, axis=-1)).any()
