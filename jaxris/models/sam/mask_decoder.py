"""SAM's mask decoder (segment_anything/modeling/mask_decoder.py) in Flax NNX, NHWC.

Output tokens (IoU token + 4 mask tokens) are prepended to the prompt tokens, run through the
two-way transformer with the image embedding, and turned into masks by hypernetwork MLPs
applied to the 4x upscaled image embedding.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxris.models.sam.common import GELU, MLP, ConvTranspose2x2, Embedding, layer_norm
from jaxris.models.sam.transformer import TwoWayTransformer


class MaskDecoder(nnx.Module):
  def __init__(self, transformer_dim: int = 256, transformer_depth: int = 2, transformer_mlp_dim: int = 2048,
               transformer_num_heads: int = 8, num_multimask_outputs: int = 3, iou_head_depth: int = 3,
               iou_head_hidden_dim: int = 256, *, rngs: nnx.Rngs, dtype=None):
    self.transformer = TwoWayTransformer(transformer_depth, transformer_dim, transformer_num_heads,
                                         transformer_mlp_dim, rngs=rngs, dtype=dtype)
    self.num_mask_tokens = num_multimask_outputs + 1
    self.iou_token = Embedding(1, transformer_dim, rngs=rngs)
    self.mask_tokens = Embedding(self.num_mask_tokens, transformer_dim, rngs=rngs)
    self.output_upscaling = nnx.List([
        ConvTranspose2x2(transformer_dim, transformer_dim // 4, rngs=rngs, dtype=dtype),
        layer_norm(transformer_dim // 4, 1e-6, rngs, dtype),
        GELU(),
        ConvTranspose2x2(transformer_dim // 4, transformer_dim // 8, rngs=rngs, dtype=dtype),
        GELU(),
    ])
    self.output_hypernetworks_mlps = nnx.List([
        MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3, rngs=rngs, dtype=dtype)
        for _ in range(self.num_mask_tokens)])
    self.iou_prediction_head = MLP(transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth,
                                   rngs=rngs, dtype=dtype)

  def __call__(self, image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings,
               multimask_output: bool):
    """image_embeddings: [B or 1, h, w, C]; image_pe: [1, h, w, C]; sparse: [B, N, C]; dense: [B, h, w, C].

    Returns (masks [B, M, 4h, 4w], iou_pred [B, M]) with M = 3 if multimask_output else 1.
    """
    masks, iou_pred = self.predict_masks(image_embeddings, image_pe, sparse_prompt_embeddings,
                                         dense_prompt_embeddings)
    sel = slice(1, None) if multimask_output else slice(0, 1)
    return masks[:, sel], iou_pred[:, sel]

  def predict_masks(self, image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings):
    b = sparse_prompt_embeddings.shape[0]
    output_tokens = jnp.concatenate([self.iou_token.weight[...], self.mask_tokens.weight[...]], axis=0)
    output_tokens = jnp.broadcast_to(output_tokens, (b,) + output_tokens.shape).astype(sparse_prompt_embeddings.dtype)
    tokens = jnp.concatenate([output_tokens, sparse_prompt_embeddings], axis=1)

    # The official code repeats one image's embedding for every prompt set (batch of 1 image);
    # a batch of images with one prompt set each is used as is.
    src = jnp.broadcast_to(image_embeddings, (b,) + image_embeddings.shape[1:]) + dense_prompt_embeddings
    pos_src = jnp.broadcast_to(image_pe, (b,) + image_pe.shape[1:])
    _, h, w, c = src.shape
    hs, src = self.transformer(src, pos_src, tokens)
    iou_token_out = hs[:, 0]
    mask_tokens_out = hs[:, 1:1 + self.num_mask_tokens]

    upscaled = src.reshape(b, h, w, c)
    for layer in self.output_upscaling:
      upscaled = layer(upscaled)
    hyper_in = jnp.stack([mlp(mask_tokens_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], axis=1)
    masks = jnp.einsum("bmc,bhwc->bmhw", hyper_in, upscaled)
    iou_pred = self.iou_prediction_head(iou_token_out)
    return masks, iou_pred

