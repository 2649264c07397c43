"""jaxris.ops.resize against torch.nn.functional.interpolate (the official code's resizing)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from jaxris.ops.resize import resize_2d, resize_axis
from parity import assert_close


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
@pytest.mark.parametrize("size", [(40, 9), (17, 23), (5, 50), (64, 64), (1, 3)])
def test_matches_torch_interpolate(mode, size):
  x = np.random.default_rng(0).standard_normal((2, 3, 17, 23)).astype(np.float32)
  ref = F.interpolate(torch.tensor(x), size=size, mode=mode, align_corners=False)
  assert_close(resize_2d(x, size, mode), ref, tol=1e-5, what=f"{mode} to {size}")


def test_linear_1d_like_rel_pos_tables():
  x = np.random.default_rng(1).standard_normal((1, 8, 27)).astype(np.float32)
  ref = F.interpolate(torch.tensor(x), size=63, mode="linear")
  assert_close(resize_axis(x, -1, 63, "linear"), ref, tol=1e-5)


def test_align_corners_upsampling():
  x = np.random.default_rng(2).standard_normal((2, 1, 32, 20)).astype(np.float32)
  ref = torch.nn.UpsamplingBilinear2d(scale_factor=4)(torch.tensor(x))
  assert_close(resize_2d(x, (128, 80), "bilinear_align_corners"), ref, tol=1e-5)
