"""Segmentation losses on mask logits [B, H, W] against soft targets in [0, 1]."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def bce(logits, target):
  """Mean binary cross-entropy with logits (DIT's F.binary_cross_entropy_with_logits)."""
  return optax.sigmoid_binary_cross_entropy(logits, target).mean()


def dice(logits, target, eps: float = 1.0):
  """1 - soft Dice per mask, averaged (LISA/EVF-style, smoothed by `eps`)."""
  p = jax.nn.sigmoid(logits).reshape(logits.shape[0], -1)
  t = target.reshape(target.shape[0], -1)
  return (1 - (2 * (p * t).sum(-1) + eps) / (p.sum(-1) + t.sum(-1) + eps)).mean()


def evf(logits, target):
  """EVF-SAM's BCE + Dice. Its Dice (model/evf_sam.py) divides by scale 1000 with eps 1e-6, i.e. eps
  1e-3 unscaled; the weights 2.0 / 0.5 are LISA's defaults (EVF-SAM's training code is unreleased)."""
  return 2.0 * bce(logits, target) + 0.5 * dice(logits, target, eps=1e-3)


LOSSES = {
    "bce": bce,
    "bce+dice": lambda logits, target: bce(logits, target) + dice(logits, target),
    "evf": evf,
}
