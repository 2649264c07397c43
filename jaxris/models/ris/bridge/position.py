"""The sine positional encoding of DETR / Mask2Former, shared by the bridge's pixel decoder and DFAM.

Both use ``PositionEmbeddingSine(128, normalize=True)`` on all-valid feature maps, so the
encoding depends only on the grid size: it is a constant, computed here once per size in
numpy float32 with torch's operation order (cumulative index / (last + 1e-6) * scale, then
``temperature ** (2 * (k // 2) / num_feats)``), and folded into the traced program.
"""

from __future__ import annotations

import functools
import math

import numpy as np

__all__ = ["sine_position_encoding"]


@functools.lru_cache(maxsize=32)
def _encoding(h: int, w: int, num_feats: int, temperature: float, normalize: bool, scale: float) -> np.ndarray:
  f32 = np.float32
  y = np.arange(1, h + 1, dtype=f32)  # cumsum of an all-valid mask: 1 .. H
  x = np.arange(1, w + 1, dtype=f32)
  if normalize:
    y = y / (y[-1] + f32(1e-6)) * f32(scale)
    x = x / (x[-1] + f32(1e-6)) * f32(scale)
  k = np.arange(num_feats, dtype=f32)
  dim_t = f32(temperature) ** (f32(2) * np.floor(k / f32(2)) / f32(num_feats))

  def channels(p):  # [n] -> [n, num_feats]: sin of the even channels interleaved with cos of the odd
    a = p[:, None] / dim_t
    return np.stack([np.sin(a[:, 0::2]), np.cos(a[:, 1::2])], axis=-1).reshape(len(p), num_feats)

  ey, ex = channels(y), channels(x)
  out = np.concatenate([np.broadcast_to(ey[:, None], (h, w, num_feats)),
                        np.broadcast_to(ex[None, :], (h, w, num_feats))], axis=-1).astype(f32)
  out.setflags(write=False)
  return out


def sine_position_encoding(h: int, w: int, num_feats: int = 128, temperature: float = 10000,
                           normalize: bool = True, scale: float = 2 * math.pi) -> np.ndarray:
  """[h, w, 2 * num_feats] float32 (read-only numpy): the y channels, then the x channels, as
  Mask2Former's PositionEmbeddingSine of an (h, w) map with no padding (channels last)."""
  return _encoding(int(h), int(w), int(num_feats), float(temperature), bool(normalize), float(scale))
