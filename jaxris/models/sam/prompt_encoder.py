"""SAM's prompt encoder (segment_anything/modeling/prompt_encoder.py) in Flax NNX, NHWC.

Points carry labels 1 (foreground), 0 (background) and -1 (padding / not a point); boxes are
two corners; a low-resolution mask [B, 4h, 4w, 1] becomes the dense embedding, otherwise the
learnt ``no_mask_embed`` is broadcast over the grid.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from jaxris.models.layers import conv
from jaxris.models.sam.common import GELU, Embedding, layer_norm


class Buffer(nnx.Variable):
  """A fixed tensor from the checkpoint (a PyTorch buffer): loaded and saved, never trained."""


class PositionEmbeddingRandom(nnx.Module):
  """Positional encoding with random spatial frequencies (Tancik et al.), as in SAM."""

  def __init__(self, num_pos_feats: int = 64, scale: float | None = None, *, rngs: nnx.Rngs):
    scale = 1.0 if scale is None or scale <= 0.0 else scale
    self.positional_encoding_gaussian_matrix = Buffer(scale * jax.random.normal(rngs.params(), (2, num_pos_feats)))

  def _encode(self, coords: jnp.ndarray) -> jnp.ndarray:
    """coords in [0, 1], [..., 2] (x, y) -> [..., 2 * num_pos_feats]."""
    coords = 2 * coords - 1
    coords = coords @ self.positional_encoding_gaussian_matrix[...]
    coords = 2 * math.pi * coords
    return jnp.concatenate([jnp.sin(coords), jnp.cos(coords)], axis=-1)

  def grid(self, size: tuple[int, int]) -> jnp.ndarray:
    """[h, w, C] encoding of the pixel centres of an h x w grid."""
    h, w = size
    y = (jnp.arange(h, dtype=jnp.float32) + 0.5) / h
    x = (jnp.arange(w, dtype=jnp.float32) + 0.5) / w
    xy = jnp.stack(jnp.broadcast_arrays(x[None, :], y[:, None]), axis=-1)
    return self._encode(xy)

  def with_coords(self, coords: jnp.ndarray, image_size: tuple[int, int]) -> jnp.ndarray:
    """Pixel coordinates (x, y) in an image of size (h, w) -> [..., C]."""
    coords = coords / jnp.array([image_size[1], image_size[0]], dtype=coords.dtype)
    return self._encode(coords.astype(jnp.float32))


class PromptEncoder(nnx.Module):
  def __init__(self, embed_dim: int, image_embedding_size: tuple[int, int], input_image_size: tuple[int, int],
               mask_in_chans: int, *, rngs: nnx.Rngs):
    self.embed_dim = embed_dim
    self.image_embedding_size = tuple(image_embedding_size)
    self.input_image_size = tuple(input_image_size)
    self.pe_layer = PositionEmbeddingRandom(embed_dim // 2, rngs=rngs)
    # pos/neg point, box top-left, box bottom-right.
    self.point_embeddings = nnx.List([Embedding(1, embed_dim, rngs=rngs) for _ in range(4)])
    self.not_a_point_embed = Embedding(1, embed_dim, rngs=rngs)
    self.mask_downscaling = nnx.List([
        nnx.Conv(1, mask_in_chans // 4, (2, 2), strides=(2, 2), padding="VALID", rngs=rngs, **conv(None)),
        layer_norm(mask_in_chans // 4, 1e-6, rngs),
        GELU(),
        nnx.Conv(mask_in_chans // 4, mask_in_chans, (2, 2), strides=(2, 2), padding="VALID", rngs=rngs, **conv()),
        layer_norm(mask_in_chans, 1e-6, rngs),
        GELU(),
        nnx.Conv(mask_in_chans, embed_dim, (1, 1), rngs=rngs, **conv()),
    ])
    self.no_mask_embed = Embedding(1, embed_dim, rngs=rngs)

  def get_dense_pe(self) -> jnp.ndarray:
    """[1, h, w, C] positional encoding of the image embedding grid."""
    return self.pe_layer.grid(self.image_embedding_size)[None]

  def _embed_points(self, points, labels, pad: bool):
    points = points + 0.5  # pixel centres
    if pad:  # a padding point stands in for the absent box
      points = jnp.concatenate([points, jnp.zeros((points.shape[0], 1, 2), points.dtype)], axis=1)
      labels = jnp.concatenate([labels, -jnp.ones((labels.shape[0], 1), labels.dtype)], axis=1)
    emb = self.pe_layer.with_coords(points, self.input_image_size)
    lab = labels[..., None]
    emb = jnp.where(lab == -1, self.not_a_point_embed.weight[...][0], emb)
    emb = emb + jnp.where(lab == 0, self.point_embeddings[0].weight[...][0], 0.0)
    emb = emb + jnp.where(lab == 1, self.point_embeddings[1].weight[...][0], 0.0)
    return emb

  def _embed_boxes(self, boxes):
    corners = self.pe_layer.with_coords((boxes + 0.5).reshape(-1, 2, 2), self.input_image_size)
    corner_embed = jnp.stack([self.point_embeddings[2].weight[...][0], self.point_embeddings[3].weight[...][0]])
    return corners + corner_embed

  def _embed_masks(self, masks):
    x = masks
    for layer in self.mask_downscaling:
      x = layer(x)
    return x

  def __call__(self, points=None, boxes=None, masks=None, batch_size: int | None = None):
    """points: (coords [B, N, 2] in input-image pixels (x, y), labels [B, N]); boxes: [B, 4] (x0, y0, x1, y1);
    masks: [B, 4h, 4w, 1] low-res mask logits. Returns (sparse [B, n, C], dense [B, h, w, C])."""
    if batch_size is None:
      if points is not None:
        batch_size = points[0].shape[0]
      elif boxes is not None:
        batch_size = boxes.shape[0]
      elif masks is not None:
        batch_size = masks.shape[0]
      else:
        batch_size = 1
    sparse = [jnp.zeros((batch_size, 0, self.embed_dim))]
    if points is not None:
      sparse.append(self._embed_points(points[0], points[1], pad=boxes is None))
    if boxes is not None:
      sparse.append(self._embed_boxes(boxes))
    sparse = jnp.concatenate(sparse, axis=1)
    if masks is not None:
      dense = self._embed_masks(masks)
    else:
      h, w = self.image_embedding_size
      dense = jnp.broadcast_to(self.no_mask_embed.weight[...][0], (batch_size, h, w, self.embed_dim))
    return sparse, dense

