"""Reading user images: any PIL-readable file -> uint8 RGB [H, W, 3], with clear errors.

Grayscale, palette, RGBA/LA (alpha dropped), CMYK and 16-bit images are converted; anything
PIL cannot decode raises ``ImageError`` naming the file.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, UnidentifiedImageError


class ImageError(ValueError):
  """An image that cannot be read or converted to RGB."""


def to_rgb_uint8(array: np.ndarray) -> np.ndarray:
  """Any [H, W], [H, W, 1|3|4] array of uint8/uint16/float in [0, 1] -> uint8 RGB."""
  a = np.asarray(array)
  if a.ndim == 2:
    a = a[..., None]
  if a.ndim != 3 or a.shape[-1] not in (1, 2, 3, 4):
    raise ImageError(f"expected an image [H, W] or [H, W, C<=4], got shape {a.shape}")
  if a.shape[-1] in (2, 4):  # drop alpha
    a = a[..., :-1]
  if a.shape[-1] == 1:
    a = np.repeat(a, 3, axis=-1)
  if a.dtype == np.uint8:
    return a
  if a.dtype == np.uint16:
    return (a.astype(np.uint32) * 255 // 65535).astype(np.uint8)
  if np.issubdtype(a.dtype, np.floating):
    return (np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
  if np.issubdtype(a.dtype, np.integer) or a.dtype == bool:  # e.g. int32 from 16-bit PNGs ('I' mode)
    a = a.astype(np.int64)
    top = 65535 if a.max(initial=0) > 255 else 255
    return (np.clip(a, 0, top) * 255 // top).astype(np.uint8)
  raise ImageError(f"unsupported image dtype {a.dtype}")


def read_image(path: str) -> np.ndarray:
  """Reads `path` as uint8 RGB [H, W, 3]."""
  if not os.path.isfile(path):
    raise ImageError(f"image not found: {path}")
  try:
    with Image.open(path) as img:
      img.load()
      if img.mode in ("RGB", "L", "LA", "RGBA"):
        array = np.asarray(img)
      elif img.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(img).astype(np.int64)
        array = array.astype(np.uint16) if array.max(initial=0) <= 65535 else array
      else:  # P, CMYK, YCbCr, 1, F ...
        array = np.asarray(img.convert("RGB"))
  except (UnidentifiedImageError, OSError, SyntaxError) as e:
    raise ImageError(f"cannot read image {path}: {e}") from None
  if array.size == 0:
    raise ImageError(f"image {path} is empty")
  return to_rgb_uint8(array)
