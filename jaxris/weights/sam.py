"""Official Segment Anything checkpoints (sam_vit_{b,l,h}_*.pth) -> jaxris Sam.

The module paths of jaxris.models.sam mirror the official state_dict, so the mapping is the
small table below: LayerNorm ``weight`` -> ``scale``, Linear/Conv weights transposed to Flax's
layouts, learnt tables and buffers kept as they are. The variant (and any reduced size) is read
from the tensor shapes.
"""

from __future__ import annotations

import os
import re

import numpy as np
from flax import nnx

from jaxris.models.sam.image_encoder import ImageEncoderViT
from jaxris.models.sam.sam import VARIANTS, Sam, SamConfig, sam_config
from jaxris.weights import reader
from jaxris.weights import store, tiny_vit
from jaxris.weights.mapping import (ConversionError, Rule, conv_kernel, conv_transpose_kernel, convert,
                                    identity, linear_kernel)

FAMILY = "sam"

_LAYER_NORMS = r"norm\d|norm_final_attn|neck\.[13]|mask_downscaling\.[14]|output_upscaling\.1"
_CONVS = r"patch_embed\.proj|neck\.[02]|mask_downscaling\.[036]"
_TABLES = r"point_embeddings\.\d+|not_a_point_embed|no_mask_embed|iou_token|mask_tokens"

RULES = [  # first match wins
    *tiny_vit.RULES,  # MobileSAM's TinyViT encoder (names no ViT checkpoint has)
    Rule(rf"(.*\.(?:{_LAYER_NORMS}))\.weight", r"\1.scale"),
    Rule(r"(.*\.output_upscaling\.[03])\.weight", r"\1.kernel", conv_transpose_kernel),
    Rule(rf"(.*\.(?:{_CONVS}))\.weight", r"\1.kernel", conv_kernel),
    Rule(rf"(.*\.(?:{_TABLES}))\.weight", r"\1.weight"),
    Rule(r"(.*)\.weight", r"\1.kernel", linear_kernel),  # every other weight is a Linear
    Rule(r"(.*)\.bias", r"\1.bias"),
    Rule(r"(.*\.(?:pos_embed|rel_pos_[hw]|positional_encoding_gaussian_matrix))", r"\1", identity),
]

_VARIANT_BY_WIDTH = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}


def infer_config(state_dict: dict[str, np.ndarray], variant: str | None = None) -> SamConfig:
  """Reads the encoder's size from the tensor shapes (or starts from a forced `variant`)."""
  if tiny_vit.is_tiny_vit(state_dict):
    return tiny_vit.infer_config(state_dict)
  key = "image_encoder.patch_embed.proj.weight"
  if key not in state_dict:
    raise ConversionError(f"not a Segment Anything checkpoint: no '{key}' "
                          f"(first keys: {sorted(state_dict)[:5]})")
  width = int(state_dict[key].shape[0])
  patch = int(state_dict[key].shape[-1])
  # Every encoder field below is read from the shapes; the variant only supplies the rest
  # (and the head count when the checkpoint has no relative-position tables to read it from).
  variant = variant or _VARIANT_BY_WIDTH.get(width, "vit_b")
  blocks = sorted({int(m.group(1)) for k in state_dict if (m := re.match(r"image_encoder\.blocks\.(\d+)\.", k))})
  depth = len(blocks)
  overrides = dict(embed_dim=width, depth=depth, patch_size=patch)
  rel = {i: state_dict.get(f"image_encoder.blocks.{i}.attn.rel_pos_h") for i in blocks}
  if "image_encoder.pos_embed" in state_dict:
    grid = int(state_dict["image_encoder.pos_embed"].shape[1])
  else:
    overrides["use_abs_pos"] = False
    # Global blocks carry the largest relative-position tables (2 * grid - 1 rows).
    grid = (max((int(r.shape[0]) for r in rel.values() if r is not None), default=127) + 1) // 2
  if rel and all(r is not None for r in rel.values()):
    head_dim = int(next(iter(rel.values())).shape[1])
    overrides["num_heads"] = width // head_dim
    overrides["global_attn_indexes"] = tuple(i for i in blocks if rel[i].shape[0] == 2 * grid - 1)
    windowed = [rel[i].shape[0] for i in blocks if rel[i].shape[0] != 2 * grid - 1]
    if windowed:
      overrides["window_size"] = (windowed[0] + 1) // 2
  else:
    overrides["use_rel_pos"] = False
  cfg = sam_config(variant, img_size=grid * patch, **overrides)
  return cfg


def abstract_model(cfg: SamConfig) -> Sam:
  return nnx.eval_shape(lambda: Sam(cfg, rngs=nnx.Rngs(0)))


def convert_state_dict(state_dict, cfg: SamConfig | None = None,
                       variant: str | None = None) -> tuple[SamConfig, reader.StateDict]:
  """Official state_dict (numpy arrays, torch tensors or a reader.StateDict) -> (config, jaxris
  params); strict. The params are lazy (see jaxris.weights.mapping.convert)."""
  state_dict = reader.lazy(state_dict)
  cfg = cfg or infer_config(state_dict.stand_ins(), variant)  # shapes only: no tensor read
  shapes = store.param_shapes(abstract_model(cfg))
  return cfg, convert(state_dict, RULES, shapes, ignore=tiny_vit.IGNORE, what="SAM checkpoint")


def read_checkpoint(path: str) -> reader.StateDict:
  """An official .pth or a .safetensors file, read lazily and safely (jaxris.weights.reader)."""
  return reader.read(path)


def build(cfg: SamConfig, params, dtype=None) -> Sam:
  # Abstract first: every weight is assigned, so a random init would only cost compile time (25-45 s).
  model = nnx.eval_shape(lambda: Sam(cfg, rngs=nnx.Rngs(0), dtype=dtype))
  store.assign_params(model, dict(params))
  return model


def from_torch(state_dict, variant: str | None = None, dtype=None) -> Sam:
  """A jaxris Sam from an official state_dict (torch tensors or numpy arrays), or a checkpoint path."""
  sd = reader.read(state_dict) if isinstance(state_dict, (str, os.PathLike)) else reader.from_checkpoint(state_dict)
  cfg, params = convert_state_dict(sd, variant=variant)
  return build(cfg, params, dtype)


def encoder_from_torch(state_dict, dtype=None) -> ImageEncoderViT:
  """The image encoder alone, from an official ``ImageEncoderViT.state_dict()``; strict."""
  prefix = "image_encoder."
  sd = reader.lazy({prefix + k: v for k, v in state_dict.items()})
  cfg = infer_config(sd.stand_ins())
  shapes = {k: s for k, s in store.param_shapes(abstract_model(cfg)).items() if k.startswith(prefix)}
  params = convert(sd, RULES, shapes, what="SAM image encoder state_dict")
  encoder = ImageEncoderViT(cfg.encoder, rngs=nnx.Rngs(0), dtype=dtype)
  store.assign_params(encoder, {k[len(prefix):]: v for k, v in params.items()})
  return encoder


def save(directory: str, cfg: SamConfig, params, progress: bool = False) -> None:
  store.save(directory, FAMILY, cfg.to_dict(), params, progress)


def load(directory: str, dtype=None) -> Sam:
  """A converted weights directory (python convert/sam.py ...) -> Sam. No PyTorch needed."""
  cfg, params = store.load(directory, FAMILY)
  return build(SamConfig.from_dict(cfg), params, dtype)
