"""Drawing masks over images for people to look at."""

from __future__ import annotations

import textwrap

import numpy as np
from PIL import Image, ImageDraw, ImageFont

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


GREEN = (0, 200, 0)


def comparison(image: np.ndarray, truth: np.ndarray, predicted: np.ndarray, phrase: str, min_side: int = 320) -> np.ndarray:
  """One picture to read at a glance: the phrase and the IoU on top, the ground truth (green, left) and
  the prediction (blue, right) below, each enlarged (nearest, so pixels stay pixels) to at least `min_side`."""
  truth, predicted = np.asarray(truth) > 0, np.asarray(predicted) > 0
  union = (truth | predicted).sum()
  iou = (truth & predicted).sum() / union if union else 1.0
  scale = max(1, -(-min_side // min(image.shape[:2])))
  big = lambda a: np.repeat(np.repeat(a, scale, axis=0), scale, axis=1)
  panels = [big(overlay(image, truth, colour=GREEN)), big(overlay(image, predicted))]
  gap = np.full((panels[0].shape[0], 8, 3), 255, np.uint8)
  body = np.concatenate([panels[0], gap, panels[1]], axis=1)
  font = ImageFont.load_default(size=16)
  lines = textwrap.wrap(f'"{phrase}"', width=max(20, body.shape[1] // 9)) + [
      f"IoU {100 * iou:.1f}%   left: ground truth (green)   right: prediction (blue)"]
  header = Image.new("RGB", (body.shape[1], 8 + 20 * len(lines)), (255, 255, 255))
  draw = ImageDraw.Draw(header)
  for i, line in enumerate(lines):
    draw.text((6, 4 + 20 * i), line, fill=(0, 0, 0), font=font)
  return np.concatenate([np.asarray(header), body], axis=0)
