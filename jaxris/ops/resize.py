"""Resizing that matches PyTorch's ``F.interpolate`` exactly (align_corners=False, no antialias).

``jax.image.resize`` antialiases when downscaling and uses a different cubic kernel (a=-0.5),
so it cannot reproduce the official code. Here each axis is resized by a small dense
interpolation matrix built in float64 numpy at trace time, applied with one einsum: exact
to float rounding, and fast because the matrices are tiny next to the images they resize.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np

_CUBIC_A = -0.75  # PyTorch's bicubic coefficient


def _source_coords(in_size: int, out_size: int) -> np.ndarray:
  scale = in_size / out_size
  return (np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5


def linear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """1-D linear interpolation (torch 'linear'/'bilinear', cv2 INTER_LINEAR; half-pixel centres, no
  antialiasing, clamped at the borders) as taps: per output, two source indices and the second's weight."""
  src = np.maximum(_source_coords(in_size, out_size), 0.0)  # torch clamps negative coords for linear
  return _taps(src, in_size)


@functools.lru_cache(maxsize=64)
def linear_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out, in] weights of 1-D linear interpolation (torch 'linear'/'bilinear')."""
  return _two_tap_matrix(np.maximum(_source_coords(in_size, out_size), 0.0), in_size)


def _taps(src: np.ndarray, in_size: int):
  i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
  return i0, np.minimum(i0 + 1, in_size - 1), src - i0


def _two_tap_matrix(src: np.ndarray, in_size: int) -> np.ndarray:
  """Linear interpolation weights at fractional source positions `src` (one row each)."""
  i0, i1, frac = _taps(src, in_size)
  m = np.zeros((len(src), in_size))
  rows = np.arange(len(src))
  np.add.at(m, (rows, i0), 1.0 - frac)
  np.add.at(m, (rows, i1), frac)
  return m


def _cubic_weights(t: np.ndarray) -> np.ndarray:
  a = _CUBIC_A
  near = lambda x: ((a + 2) * x - (a + 3)) * x * x + 1          # |x| <= 1
  far = lambda x: ((a * x - 5 * a) * x + 8 * a) * x - 4 * a      # 1 < |x| < 2
  return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


@functools.lru_cache(maxsize=64)
def cubic_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out, in] weights of 1-D bicubic interpolation (torch 'bicubic', a=-0.75, clamped borders)."""
  src = _source_coords(in_size, out_size)
  i = np.floor(src).astype(np.int64)
  w = _cubic_weights(src - i)
  m = np.zeros((out_size, in_size))
  rows = np.arange(out_size)
  for tap in range(4):
    np.add.at(m, (rows, np.clip(i - 1 + tap, 0, in_size - 1)), w[:, tap])
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
