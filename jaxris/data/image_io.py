"""Images from files or arrays -> uint8 RGB [H, W, 3], with clear errors.

This is the one conversion that training, evaluation and prediction all use, so a model
sees the same pixels whichever way an image reaches it.

Grayscale, palette, CMYK, RGBA/LA (alpha dropped, as PIL's `.convert('RGB')` in the official
loaders does) and 16-bit images are converted. A 16-bit value v becomes the nearest 8-bit
level, round(v / 257) (65535 = 255 * 257, so 0 and 65535 map to 0 and 255). Anything that
would need a guess -- an unreadable file, floating-point pixels ([0, 1] or [0, 255]?), other
integer types, other shapes -- raises `ImageError` naming the input instead.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = ["ImageError", "read_image", "to_rgb_uint8"]

_16_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


class ImageError(ValueError):
  """An image that cannot be read or converted to RGB."""


def to_rgb_uint8(array) -> np.ndarray:
  """An [H, W] or [H, W, 1|2|3|4] uint8 or uint16 array -> contiguous uint8 RGB [H, W, 3]."""
  a = np.asarray(array)
  if a.ndim == 2:
    a = a[..., None]
  if a.ndim != 3 or a.shape[-1] not in (1, 2, 3, 4):
    raise ImageError(f"Image arrays must be [H, W] or [H, W, C] with C <= 4, got shape {a.shape}.")
  if a.size == 0:
    raise ImageError(f"The image is empty (shape {a.shape}).")
  if a.dtype == np.uint16:
    a = _16_to_8_bit(a)
  elif a.dtype != np.uint8:
    raise ImageError(f"Image arrays must be uint8 (or uint16), got {a.dtype}; convert other "
                     "types yourself (their range is not known here).")
  if a.shape[-1] in (2, 4):  # Gray + alpha, RGBA: drop alpha.
    a = a[..., :-1]
  if a.shape[-1] == 1:
    a = np.repeat(a, 3, axis=-1)
  return np.ascontiguousarray(a)


def _16_to_8_bit(a: np.ndarray) -> np.ndarray:
  """round(v / 257) in integers; v * 255 / 65535 is never exactly half-way, so no ties."""
  return ((a.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def read_image(path: str | os.PathLike) -> np.ndarray:
  """Reads the image file at `path` as uint8 RGB [H, W, 3]."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise ImageError(f"image not found: {path}")
  try:
    with Image.open(path) as img:
      img.load()
      return to_rgb_uint8(_pixels(img, path))
  except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as e:
    raise ImageError(f"cannot read image {path}: {e}") from None
  except ImageError as e:
    raise ImageError(f"{path}: {e}") from None


def _pixels(img: Image.Image, path: str) -> np.ndarray:
  """The decoded pixels as uint8 or uint16, still in the file's channel layout."""
  if img.mode in ("RGB", "RGBA", "L", "LA"):
    return np.asarray(img)
  if img.mode in _16_BIT_MODES:
    return np.asarray(img).astype(np.uint16)  # Also turns big-endian I;16B native.
  if img.mode == "I":  # 32-bit integers; 16-bit PNGs open this way in older Pillow.
    values = np.asarray(img)
    if values.size and (values.min() < 0 or values.max() > 65535):
      raise ImageError("32-bit integer image with values outside 16 bits; save it as 8 or 16 bits.")
    return values.astype(np.uint16)
  if img.mode == "F":
    raise ImageError("floating-point image; save it as 8 or 16 bits.")
  return np.asarray(img.convert("RGB"))  # P, PA, CMYK, YCbCr, 1, ...
