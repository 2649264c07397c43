"""DIT-SAM's text-injecting image encoders (wysnzzzz/DIT: models/e2e, models/layer_wise).

The ViT is SAM's, run the DIT way: global attention in every block, 20 text slots prepended to
the image tokens (the relative-position term only touches the image-image block), slots dropped
before the neck. What the slots hold before block i is the scheme:

  ldit (L-DIT):  Dropout(probs[i](text))                      every block reads the BERT tokens
  edit (E-DIT):  Dropout(probs[0](text)) before block 0, then Dropout(probs[i](slots of block i-1))
  default:       no slots at all (text only reaches SAM as sparse prompts)

``probs[i]`` are zero-initialised Linear layers, so training starts from SAM's own behaviour.
When the text width differs from the ViT's (BERT 768 -> ViT-H 1280) a ``prob_text`` Linear maps
the text once first, as the official ViT-H L-DIT does.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from flax import nnx

from jaxris.models.sam.image_encoder import ImageEncoderConfig, ImageEncoderViT

SCHEMES = ("default", "edit", "ldit")


class TextInjectedEncoder(ImageEncoderViT):
  """SAM's ViT with DIT text slots; parameter paths as the official ``visual_encoder``."""

  def __init__(self, cfg: ImageEncoderConfig, scheme: str, text_dim: int, slot_dropout: float = 0.1,
               remat: bool = False, *, rngs: nnx.Rngs, dtype=None):
    if scheme not in SCHEMES:
      raise ValueError(f"unknown DIT scheme {scheme!r}; choose from {SCHEMES}")
    super().__init__(dataclasses.replace(cfg, window_partition=False), rngs=rngs, dtype=dtype)
    self.scheme = scheme
    self.remat = remat
    if scheme == "default":
      return
    width = cfg.embed_dim
    if text_dim != width:
      self.prob_text = nnx.Linear(text_dim, width, dtype=dtype, rngs=rngs)
    zeros = nnx.initializers.zeros_init()
    self.probs = nnx.List([nnx.Linear(width, width, kernel_init=zeros, bias_init=zeros, dtype=dtype, rngs=rngs)
                           for _ in range(cfg.depth)])
    self.slot_dropout = nnx.Dropout(slot_dropout)

  def __call__(self, images: jnp.ndarray, text: jnp.ndarray | None = None, *, rngs: nnx.Rngs | None = None):
    """images [B, H, W, 3] normalised; text [B, T, text_dim] BERT tokens -> [B, H/16, W/16, 256].

    ``rngs`` (with a 'dropout' stream) switches the slot dropout on, for training.
    """
    x = self.embed(images)
    run = _run_block_remat if self.remat else _run_block
    if self.scheme == "default":
      for block in self.blocks:
        x, _ = run(block, x, None)
      return self.apply_neck(x)
    if text is None:
      raise ValueError(f"the {self.scheme} encoder needs text tokens")
    text = self.prob_text(text) if hasattr(self, "prob_text") else text
    slots = None
    for i, (block, proj) in enumerate(zip(self.blocks, self.probs)):
      source = text if self.scheme == "ldit" or i == 0 else slots
      slots = self.slot_dropout(proj(source), deterministic=rngs is None, rngs=rngs)
      x, slots = run(block, x, slots)
    return self.apply_neck(x)


def _run_block(block, x, prefix):
  out = block(x, prefix=prefix)
  return out if prefix is not None else (out, None)


# Recomputes a block's activations in the backward pass instead of storing them.
_run_block_remat = nnx.remat(_run_block)
