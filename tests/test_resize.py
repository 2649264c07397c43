"""jaxris.ops.resize against torch.nn.functional.interpolate (the official code's resizing)."""

import hashlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from jaxris.ops.resize import resize_2d, resize_axis, resize_hw
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


# ------------------------------------------------------------------------------------------
# The numpy form (host-side data preparation).


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
@pytest.mark.parametrize("size", [(224, 224), (9, 13), (37, 100), (1, 3)])
def test_numpy_resize_matches_torch_interpolate(mode, size):
  x = np.random.default_rng(3).random((37, 53, 3), dtype=np.float32)
  ref = F.interpolate(torch.tensor(x).permute(2, 0, 1)[None], size=size, mode=mode,
                      align_corners=False)[0].permute(1, 2, 0)
  got = resize_hw(x, size, mode)
  assert got.dtype == np.float32
  assert_close(got, ref, tol=1e-5, what=f"{mode} to {size}")
  np.testing.assert_array_equal(resize_hw(x[..., 0], size, mode), got[..., 0])  # [H, W] too.


def _ramp(shape):
  n = int(np.prod(shape))
  return (((np.arange(n) * 7919) % 1013) / 1012).astype(np.float32).reshape(shape)


# sha256 (20 hex digits) of the outputs of the pipeline's former _bicubic_resize (the EVF-SAM
# 224 view) and metrics' former _bilinear_resize (restore_original), before they moved here:
# training and evaluation must keep producing exactly these pixels.
@pytest.mark.parametrize("mode,shape,size,digest", [
    ("bicubic", (300, 451, 3), (224, 224), "b61297036cb3803af481"),
    ("bicubic", (17, 9, 3), (224, 224), "5ee8b379d488abe0a5c6"),
    ("bicubic", (224, 224, 3), (100, 37), "920e3aa6b8b3962ec4b4"),
    ("bilinear", (24, 32), (9, 13), "adb12ef13218dba99402"),
    ("bilinear", (25, 32), (300, 451), "2b9e27a9bc9e55b864aa"),
])
def test_numpy_resize_is_bit_exact_with_the_former_pipeline_code(mode, shape, size, digest):
  out = resize_hw(_ramp(shape), size, mode)
  assert hashlib.sha256(out.tobytes()).hexdigest()[:20] == digest


def test_numpy_resize_rejects_unknown_methods():
  with pytest.raises(ValueError, match="method must be one of"):
    resize_hw(np.zeros((4, 4), np.float32), (2, 2), "nearest")
