"""Drawing masks over images for people to look at."""

from __future__ import annotations

import numpy as np

_COLOUR = np.array([30, 144, 255], np.float32)  # dodger blue: visible on most photos


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5, colour=_COLOUR) -> np.ndarray:
  """uint8 RGB image with `mask` (bool [H, W]) tinted and its outline drawn in full colour."""
  out = image.astype(np.float32).copy()
  m = mask.astype(bool)
  out[m] = (1 - alpha) * out[m] + alpha * np.asarray(colour, np.float32)
  edge = m & ~(_shift(m, 1, 0) & _shift(m, -1, 0) & _shift(m, 1, 1) & _shift(m, -1, 1))
  out[edge] = colour
  return out.round().astype(np.uint8)


def _shift(m: np.ndarray, step: int, axis: int) -> np.ndarray:
  """`m` shifted by one pixel along `axis`, with the border treated as outside the mask."""
  out = np.zeros_like(m)
  src = [slice(None)] * 2
  dst = [slice(None)] * 2
  src[axis] = slice(max(-step, 0), m.shape[axis] - max(step, 0))
  dst[axis] = slice(max(step, 0), m.shape[axis] - max(-step, 0))
  out[tuple(dst)] = m[tuple(src)]
  return out
