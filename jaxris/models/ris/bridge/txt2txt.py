"""The bridge's sparse prompt (spec §4.5): one query token cross-attends to the projected BERT tokens.

Official ``Txt2txt`` (``ATTN_ONLY=False``): a post-norm cross-attention layer
(``nn.MultiheadAttention(256, 8)``) then a post-norm FFN (1024, ReLU), dropout 0. There is no
key-padding mask: padded BERT positions are attended, as in the official code. The query is
the projected BERT [CLS] (``'bert_cls'``, the leak-free default) or the projected CLIP text
embedding of the ground-truth COCO category (``'bert_coco'``, an oracle; spec §6); choosing it is
the caller's business, this module only attends.

The two 768 -> 256 projections around it, ``lang_mlp`` (BERT tokens) and ``clip_mlpl`` (CLIP
category embeddings), are plain ``nn.Linear`` layers with PyTorch's default initialisation:
``text_projection`` builds either.
"""

from __future__ import annotations

from flax import nnx

from jaxris.models.ris.bridge.attention import CrossAttentionLayer, FFNLayer
from jaxris.models.ris.bridge.common import torch_linear


def text_projection(d_in: int = 768, d_out: int = 256, *, rngs: nnx.Rngs, dtype=None) -> nnx.Linear:
  """``lang_mlp`` / ``clip_mlpl``: Linear(768, 256) with PyTorch's default initialisation."""
  return torch_linear(d_in, d_out, ("embed", "embed"), rngs=rngs, dtype=dtype)


class Txt2txt(nnx.Module):
  """query [B, Nq, dim], tokens [B, T, dim] -> [B, Nq, dim] (Nq = 1 for the sparse prompt).

  Parameter paths mirror the official state dict: ``ca.multihead_attn.{in_proj,out_proj}``,
  ``ca.norm``, ``fcs.{linear1,linear2,norm}``.
  """

  def __init__(self, dim: int = 256, num_heads: int = 8, ffn_dim: int = 1024, *, rngs: nnx.Rngs, dtype=None):
    self.ca = CrossAttentionLayer(dim, num_heads, rngs=rngs, dtype=dtype)
    self.fcs = FFNLayer(dim, ffn_dim, rngs=rngs, dtype=dtype)

  def __call__(self, query, tokens):
    return self.fcs(self.ca(query, tokens))
