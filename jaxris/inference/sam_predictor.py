"""Encode an image once, then answer many prompts cheaply (the official SamPredictor's API)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxris.models.sam.sam import Sam, postprocess_masks, resize_longest_side, scale_coords


class SamPredictor:
  """``set_image`` runs the image encoder; ``predict`` runs prompt encoder + mask decoder only."""

  def __init__(self, model: Sam):
    self.model = model
    graphdef, self._state = nnx.split(model)
    # Jitted per predictor over the graph only: a jit with `self` static would keep every predictor
    # (and its weights) alive in JAX's cache after the user drops it.
    self._encode = jax.jit(functools.partial(_encode, graphdef))
    self._decode = jax.jit(functools.partial(_decode, graphdef), static_argnums=(5, 6, 7))
    self.reset_image()

  def reset_image(self) -> None:
    self.features = None
    self.original_size = None
    self.input_size = None

  def set_image(self, image: np.ndarray) -> None:
    """image: uint8 [H, W, 3] RGB."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
      raise ValueError(f"expected a uint8 RGB image [H, W, 3], got {image.dtype} {image.shape}")
    resized = resize_longest_side(image, self.model.img_size)
    self.original_size = image.shape[:2]
    self.input_size = resized.shape[:2]
    self.features = self._encode(self._state, jnp.asarray(resized)[None])

  def predict(self, point_coords=None, point_labels=None, box=None, mask_input=None,
              multimask_output: bool = True, return_logits: bool = False):
    """Prompts in original-image pixels. Returns (masks [M, H, W], iou [M], low_res_logits [M, 256, 256])."""
    if self.features is None:
      raise RuntimeError("call set_image() before predict()")
    points = None
    if point_coords is not None:
      if point_labels is None:
        raise ValueError("point_labels must accompany point_coords")
      coords = scale_coords(np.asarray(point_coords, np.float32).reshape(-1, 2), self.original_size, self.model.img_size)
      points = (jnp.asarray(coords)[None], jnp.asarray(np.asarray(point_labels, np.int32).reshape(-1))[None])
    boxes = None
    if box is not None:
      boxes = scale_coords(np.asarray(box, np.float32).reshape(-1, 2, 2), self.original_size, self.model.img_size)
      boxes = jnp.asarray(boxes.reshape(-1, 4))
    if mask_input is not None:  # [1, 256, 256] low-res logits as returned by a previous call
      mask_input = jnp.asarray(mask_input, jnp.float32).reshape(1, *np.shape(mask_input)[-2:], 1)
    masks, iou, low_res = self._decode(self._state, self.features, points, boxes, mask_input, multimask_output,
                                       tuple(self.input_size), tuple(self.original_size))
    masks = np.asarray(masks[0])
    if not return_logits:
      masks = masks > 0.0
    return masks, np.asarray(iou[0]), np.asarray(low_res[0])


def _encode(graphdef, state, image):
  model = nnx.merge(graphdef, state)
  return model.image_encoder(model.preprocess(image))


def _decode(graphdef, state, features, points, boxes, mask_input, multimask_output, input_size, original_size):
  model = nnx.merge(graphdef, state)
  low_res, iou = model.decode(features, points, boxes, mask_input, multimask_output, batch_size=1)
  masks = postprocess_masks(low_res, model.img_size, input_size, original_size)
  return masks, iou, low_res
