"""Segment Anything: image encoder + prompt encoder + mask decoder, with SAM's pre/post-processing.

Mirrors segment_anything/modeling/sam.py and utils/transforms.py: images are resized so the
longest side is ``img_size`` (PIL bilinear, sides rounded half up), normalised with SAM's pixel
mean/std and zero-padded bottom-right; low-res mask logits are upscaled bilinearly to the
padded input, cropped and resized to the original image size (torch ``F.interpolate``
semantics, align_corners=False).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx
from PIL import Image

from jaxris.models.sam.image_encoder import ImageEncoderConfig, ImageEncoderViT
from jaxris.models.sam.mask_decoder import MaskDecoder
from jaxris.models.sam.prompt_encoder import PromptEncoder
from jaxris.models.sam.tiny_vit import TinyViT, TinyViTConfig
from jaxris.ops.resize import linear_matrix, resize_axis

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)

# The official build_sam_vit_{b,l,h} encoders, and MobileSAM's build_sam_vit_t (a TinyViT encoder).
VARIANTS: dict[str, dict[str, Any]] = {
    "vit_b": dict(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11)),
    "vit_l": dict(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)),
    "vit_h": dict(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)),
    "vit_t": dict(embed_dims=(64, 128, 160, 320), depths=(2, 2, 6, 2), num_heads=(2, 4, 5, 10),
                  window_sizes=(7, 7, 14, 7)),
}


@dataclasses.dataclass(frozen=True)
class SamConfig:
  encoder: ImageEncoderConfig | TinyViTConfig = ImageEncoderConfig()
  prompt_embed_dim: int = 256
  mask_in_chans: int = 16
  decoder_depth: int = 2
  decoder_mlp_dim: int = 2048
  decoder_num_heads: int = 8
  num_multimask_outputs: int = 3
  iou_head_depth: int = 3
  iou_head_hidden_dim: int = 256

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict) -> "SamConfig":
    d = dict(d)
    enc = dict(d.pop("encoder"))
    if "embed_dims" in enc:  # one width per stage: TinyViT (vit_t)
      return cls(encoder=TinyViTConfig.from_dict(enc), **d)
    enc["global_attn_indexes"] = tuple(enc["global_attn_indexes"])
    return cls(encoder=ImageEncoderConfig(**enc), **d)


def sam_config(variant: str = "vit_b", img_size: int = 1024, **encoder_overrides) -> SamConfig:
  """The official config of `variant`, optionally at another input size or reduced for tests."""
  if variant not in VARIANTS:
    raise ValueError(f"unknown SAM variant {variant!r}; choose from {sorted(VARIANTS)}")
  enc = {**VARIANTS[variant], "img_size": img_size, **encoder_overrides}
  if variant == "vit_t":
    return SamConfig(encoder=TinyViTConfig.from_dict(enc))
  enc["global_attn_indexes"] = tuple(i for i in enc["global_attn_indexes"] if i < enc["depth"])
  return SamConfig(encoder=ImageEncoderConfig(**enc))


class Sam(nnx.Module):
  def __init__(self, cfg: SamConfig, *, rngs: nnx.Rngs, dtype=None):
    self.cfg = cfg
    grid = cfg.encoder.grid
    encoder = TinyViT if isinstance(cfg.encoder, TinyViTConfig) else ImageEncoderViT
    self.image_encoder = encoder(cfg.encoder, rngs=rngs, dtype=dtype)
    self.prompt_encoder = PromptEncoder(cfg.prompt_embed_dim, (grid, grid), (cfg.encoder.img_size,) * 2,
                                        cfg.mask_in_chans, rngs=rngs)
    self.mask_decoder = MaskDecoder(cfg.prompt_embed_dim, cfg.decoder_depth, cfg.decoder_mlp_dim,
                                    cfg.decoder_num_heads, cfg.num_multimask_outputs, cfg.iou_head_depth,
                                    cfg.iou_head_hidden_dim, rngs=rngs, dtype=dtype)

  @property
  def img_size(self) -> int:
    return self.cfg.encoder.img_size

  def preprocess(self, images: jnp.ndarray) -> jnp.ndarray:
    """[B, h, w, 3] resized RGB pixels in 0..255 -> normalised and zero-padded to [B, S, S, 3]."""
    x = (images.astype(jnp.float32) - jnp.asarray(PIXEL_MEAN)) / jnp.asarray(PIXEL_STD)
    pad_h, pad_w = self.img_size - x.shape[1], self.img_size - x.shape[2]
    return jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))

  def decode(self, image_embeddings, points=None, boxes=None, mask_input=None, multimask_output: bool = False,
             batch_size: int | None = None):
    """Prompts (in padded-input pixel coordinates) -> (low-res mask logits [B, M, 4h, 4w], iou [B, M])."""
    sparse, dense = self.prompt_encoder(points, boxes, mask_input, batch_size=batch_size)
    return self.mask_decoder(image_embeddings, self.prompt_encoder.get_dense_pe(), sparse, dense, multimask_output)

  def postprocess_masks(self, masks: jnp.ndarray, input_size: tuple[int, int], original_size: tuple[int, int]):
    """[B, M, h, w] low-res logits -> [B, M, H, W] at the original image size."""
    return postprocess_masks(masks, self.img_size, input_size, original_size)


def postprocess_masks(masks, img_size: int, input_size, original_size):
  """Upscale to the padded input, crop the padding, resize to the original size (torch semantics).

  Both steps are linear per axis, so they fold into one [original, low-res] matrix per axis.
  """
  out = masks
  for axis, (inp, orig) in ((-2, (input_size[0], original_size[0])), (-1, (input_size[1], original_size[1]))):
    up = linear_matrix(masks.shape[axis], img_size)[:inp]
    matrix = linear_matrix(inp, orig) @ up if inp != orig else up
    out = resize_axis(out, axis, orig, "bilinear", matrix=matrix)
  return out


def preprocess_shape(h: int, w: int, long_side: int) -> tuple[int, int]:
  """Official ResizeLongestSide.get_preprocess_shape: sides scaled and rounded half up."""
  scale = long_side * 1.0 / max(h, w)
  return int(h * scale + 0.5), int(w * scale + 0.5)


def resize_longest_side(image: np.ndarray, long_side: int) -> np.ndarray:
  """uint8 [H, W, 3] -> uint8 resized with PIL bilinear, as the official predictor does."""
  new_h, new_w = preprocess_shape(image.shape[0], image.shape[1], long_side)
  return np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))


def scale_coords(coords: np.ndarray, original_size: tuple[int, int], long_side: int) -> np.ndarray:
  """(x, y) pixel coordinates of the original image -> coordinates in the resized input."""
  h, w = original_size
  new_h, new_w = preprocess_shape(h, w, long_side)
  coords = np.array(coords, dtype=np.float64, copy=True)
  coords[..., 0] *= new_w / w
  coords[..., 1] *= new_h / h
  return coords.astype(np.float32)
