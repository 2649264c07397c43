"""Builders for official SAM modules with random weights and their jaxris conversions."""

import numpy as np
import torch
from segment_anything.build_sam import _build_sam

from jaxris.weights import sam as sam_weights
from jaxris.weights.random_torch import randomize_


def official_sam(embed_dim=96, depth=2, num_heads=4, global_attn_indexes=(1,), img_size=1024, seed=0):
  """An official segment_anything Sam (any size) with random weights."""
  torch.manual_seed(seed)
  model = _build_sam(encoder_embed_dim=embed_dim, encoder_depth=depth, encoder_num_heads=num_heads,
                     encoder_global_attn_indexes=list(global_attn_indexes), checkpoint=None)
  if img_size != 1024:  # _build_sam fixes 1024; rebuild the parts that depend on the input size
    from segment_anything.modeling import ImageEncoderViT, PromptEncoder
    from functools import partial
    grid = img_size // 16
    model.image_encoder = ImageEncoderViT(
        depth=depth, embed_dim=embed_dim, img_size=img_size, mlp_ratio=4, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        num_heads=num_heads, patch_size=16, qkv_bias=True, use_rel_pos=True, global_attn_indexes=list(global_attn_indexes),
        window_size=14, out_chans=256)
    model.prompt_encoder = PromptEncoder(embed_dim=256, image_embedding_size=(grid, grid),
                                         input_image_size=(img_size, img_size), mask_in_chans=16)
  return randomize_(model, seed)


def convert(model: torch.nn.Module):
  return sam_weights.from_torch(model.state_dict())


def nhwc(x: torch.Tensor) -> np.ndarray:
  return x.permute(0, 2, 3, 1).numpy()


def nchw(x) -> np.ndarray:
  return np.asarray(x).transpose(0, 3, 1, 2)
