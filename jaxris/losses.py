"""Training losses by recipe name (``cfg.loss``).

``LOSSES`` take mask logits [B, H, W] and soft targets in [0, 1] (DIT, EVF-SAM). A model whose forward
has more than one output (the bridge: ``train_outputs`` returns a dict) trains with a
``STRUCTURED_LOSSES`` entry instead, called as ``loss(outputs, batch, key, **cfg.loss_weights)`` with the
whole batch (the fields the model class lists in ``LOSS_INPUTS``) and a PRNG key for sampled points.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxris import bridge_losses


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


def bridge(outputs, batch, key, **weights):
  """The SAM+CLIP bridge's loss (jaxris.bridge_losses, spec §5). Each referring expression has one GT
  instance, its mask, valid unless the expression has no target (``batch["no_target"]``); ``weights``
  are LossWeights fields (BCE 2.0 / Dice 0.5, the code's, by default)."""
  w = bridge_losses.LossWeights(**{k: tuple(v) if isinstance(v, list) else v for k, v in weights.items()})
  mask = batch["mask"].astype(jnp.float32)
  empty = batch["no_target"].astype(bool)
  targets = {"mask": mask, "instance_masks": mask[:, None], "instance_valid": ~empty[:, None], "empty": empty}
  if w.same_category_mask:
    targets["same_category"] = bridge_losses.same_category(batch["category"])
  outputs = dict(outputs, sam_logits=outputs["sam_logits"].astype(jnp.float32))
  total, _ = bridge_losses.bridge_loss(outputs, targets, key, w)
  return total


STRUCTURED_LOSSES = {"bridge": bridge}
