"""Resizing that matches PyTorch's ``F.interpolate`` exactly (align_corners=False, no antialias).

``jax.image.resize`` antialiases when downscaling and uses a different cubic kernel (a=-0.5),
so it cannot reproduce the official code. All resize math of jaxris lives here, in two forms:

  jax     `resize_2d` / `resize_axis`: each axis is resized by a small dense interpolation
          matrix built in float64 numpy at trace time and applied with one einsum. Exact to
          float rounding, and fast because the matrices are tiny next to the images.
  numpy   `resize_hw`: host-side data preparation (the EVF-SAM 224 view, restoring predictions
          to the original image size). Positions, weights and sums are float32, the width
          first, then the height, as in torch's CPU kernel: within ~1e-6 of torch, and the
          pixels the pipeline has always produced (tests pin them bit for bit).

Only numpy and jax are imported here: the data pipeline uses the numpy form without tracing.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np

__all__ = ["linear_matrix", "cubic_matrix", "linear_matrix_align_corners", "resize_axis",
           "resize_2d", "resize_hw"]

_CUBIC_A = -0.75  # PyTorch's bicubic coefficient


# ------------------------------------------------------------------------------------------
# Source positions and taps (shared by both forms).


def _source_coords(in_size: int, out_size: int) -> np.ndarray:
  """Half-pixel source positions of the outputs, float64."""
  scale = in_size / out_size
  return (np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5


def _source_coords_f32(in_size: int, out_size: int) -> np.ndarray:
  """The same positions as torch's CPU bicubic kernel computes them: a float32 scale, and
  scale * (i + 0.5) - 0.5 as one fused multiply-add (in float64 the positions would move by
  ~1e-5 pixel and a resized image by ~1e-4)."""
  f32 = np.float32
  scale = f32(in_size) / f32(out_size)
  half = np.arange(out_size).astype(f32) + f32(0.5)
  return (np.float64(scale) * half.astype(np.float64) - 0.5).astype(f32)  # fma, one rounding


def _linear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """1-D linear interpolation (torch 'linear'/'bilinear', cv2 INTER_LINEAR; half-pixel centres,
  no antialiasing, clamped at the borders): per output two source indices and the second's
  weight, float64."""
  src = np.maximum(_source_coords(in_size, out_size), 0.0)  # torch clamps negative coords for linear
  return _two_taps(src, in_size)


def _two_taps(src: np.ndarray, in_size: int):
  i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
  return i0, np.minimum(i0 + 1, in_size - 1), src - i0


def _cubic_weights(t: np.ndarray) -> np.ndarray:
  """[out, 4] weights of the taps at offsets -1, 0, 1, 2 from floor(position), in t's dtype,
  with torch's operation order (get_cubic_upsample_coefficients), so float32 matches it."""
  c = t.dtype.type
  a = c(_CUBIC_A)
  near = lambda x: ((a + c(2)) * x - (a + c(3))) * x * x + c(1)                  # |x| <= 1
  far = lambda x: ((a * x - c(5) * a) * x + c(8) * a) * x - c(4) * a            # 1 < |x| < 2
  return np.stack([far(t + c(1)), near(t), near(c(1) - t), far((c(1) - t) + c(1))], axis=-1)


def _cubic_taps(src: np.ndarray, in_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Four source indices (clamped at the borders) int [out, 4] and their weights [out, 4]."""
  i = np.floor(src)
  index = np.clip(i.astype(np.int64)[:, None] + np.arange(-1, 3), 0, in_size - 1)
  return index, _cubic_weights(src - i)


# ------------------------------------------------------------------------------------------
# jax: dense per-axis matrices.


@functools.lru_cache(maxsize=64)
def linear_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out, in] weights of 1-D linear interpolation (torch 'linear'/'bilinear')."""
  return _two_tap_matrix(np.maximum(_source_coords(in_size, out_size), 0.0), in_size)


def _two_tap_matrix(src: np.ndarray, in_size: int) -> np.ndarray:
  """Linear interpolation weights at fractional source positions `src` (one row each)."""
  i0, i1, frac = _two_taps(src, in_size)
  m = np.zeros((len(src), in_size))
  rows = np.arange(len(src))
  np.add.at(m, (rows, i0), 1.0 - frac)
  np.add.at(m, (rows, i1), frac)
  return m


@functools.lru_cache(maxsize=64)
def cubic_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out, in] weights of 1-D bicubic interpolation (torch 'bicubic', a=-0.75, clamped borders)."""
  index, w = _cubic_taps(_source_coords(in_size, out_size), in_size)
  m = np.zeros((out_size, in_size))
  rows = np.arange(out_size)
  for tap in range(4):
    np.add.at(m, (rows, index[:, tap]), w[:, tap])
  return m


@functools.lru_cache(maxsize=64)
def linear_matrix_align_corners(in_size: int, out_size: int) -> np.ndarray:
  """[out, in] weights of linear interpolation with align_corners=True (nn.UpsamplingBilinear2d)."""
  src = np.arange(out_size) * ((in_size - 1) / (out_size - 1) if out_size > 1 else 0.0)
  return _two_tap_matrix(src, in_size)


_MATRICES = {"linear": linear_matrix, "bilinear": linear_matrix, "bicubic": cubic_matrix,
             "bilinear_align_corners": linear_matrix_align_corners}


def resize_axis(x: jnp.ndarray, axis: int, size: int, method: str, matrix: np.ndarray | None = None):
  """Resizes one axis of `x` to `size` (or applies a given [size, in] matrix)."""
  if matrix is None:
    if x.shape[axis] == size:
      return x
    matrix = _MATRICES[method](x.shape[axis], size)
  m = jnp.asarray(matrix, dtype=x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32)
  x = jnp.moveaxis(x, axis, -1)
  x = jnp.einsum("...i,oi->...o", x, m)
  return jnp.moveaxis(x, -1, axis)


def resize_2d(x: jnp.ndarray, size: tuple[int, int], method: str = "bilinear", axes=(-2, -1)):
  """Resizes the two spatial `axes` of `x` to `size` like F.interpolate(mode=method)."""
  x = resize_axis(x, axes[0], size[0], method)
  return resize_axis(x, axes[1], size[1], method)


# ------------------------------------------------------------------------------------------
# numpy: float32 taps, torch's CPU summation order.


def _bilinear_axis(x: np.ndarray, axis: int, size: int) -> np.ndarray:
  i0, i1, t = _linear_taps(x.shape[axis], size)
  t = _along(t.astype(np.float32), axis, x.ndim)
  return np.take(x, i0, axis) * (1 - t) + np.take(x, i1, axis) * t


def _bicubic_axis(x: np.ndarray, axis: int, size: int) -> np.ndarray:
  index, weights = _cubic_taps(_source_coords_f32(x.shape[axis], size), x.shape[axis])
  return sum(np.take(x, index[:, k], axis) * _along(weights[:, k], axis, x.ndim)
             for k in range(4))


def _along(w: np.ndarray, axis: int, ndim: int) -> np.ndarray:
  """Per-output weights shaped to broadcast along `axis` of an ndim array."""
  return w.reshape((1,) * axis + (-1,) + (1,) * (ndim - axis - 1))


_AXIS_RESIZERS = {"bilinear": _bilinear_axis, "bicubic": _bicubic_axis}


def resize_hw(x: np.ndarray, size: tuple[int, int], method: str = "bilinear") -> np.ndarray:
  """float32 [H, W, ...] -> [h, w, ...] like torch's F.interpolate(mode=method) on the CPU
  (align_corners=False, no antialiasing): the width first, then the height, in float32.

  Every axis is resized, even one whose size does not change (torch does too; the caller
  decides when to skip a resize altogether, as torchvision's Resize does).
  """
  if method not in _AXIS_RESIZERS:
    raise ValueError(f"resize_hw method must be one of {sorted(_AXIS_RESIZERS)}, got {method!r}.")
  resize_axis_np = _AXIS_RESIZERS[method]
  x = np.asarray(x, np.float32)
  return resize_axis_np(resize_axis_np(x, 1, size[1]), 0, size[0])
