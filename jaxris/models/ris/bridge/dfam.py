"""DFAM, the bridge's dual-stream masked-attention decoder, and its GRES no-target head (spec §4.4).

DFAM does not feed the SAM decoder: it exists so that Hungarian-matched instance losses
(jaxris/bridge_losses.py) train the shared features (PWAM, pixel decoder, SAM pyramid, BERT),
and, on gRefCOCO, to hold the no-target head. Two streams share 100 learnt queries:

  SAM stream   x: masked cross-attention over the SAM pyramid [16², 32², 64²] (with query_embed),
               self-attention, FFN; its state predicts the masks (a dot product with SAM's raw
               embedding E at 64²).
  CLIP stream  y: starts again from x every layer (y never flows back into x), masked
               cross-attention over the pixel decoder's outputs [12², 24², 48²] (no query
               positions), self-attention, FFN; its state predicts the text logits.

Each layer's attention masks come from the previous layer's mask prediction: bilinear
(no antialias) 64² -> the level's size, blocked where sigmoid < 0.5, rows blocked everywhere
unblocked. A caller can pass the masks instead (``attn_masks``) so a parity test does not
depend on which side of sigmoid = 0.5 a logit rounds to.

Layout is batch-first and channels-last ([B, Q, C], feature maps [B, H, W, C]); predicted masks are
[B, Q, 64, 64] as the official ``pred_masks``. Attribute names mirror the official state_dict
(``CA_layers.0.multihead_attn``, ``transformer_ffn_layers2.1.linear1``, ``mask_embed.layers.2`` ...)
with torch's fused ``in_proj_weight`` split into q/k/v projections. Initialisation follows the
official code: xavier for every attention/FFN matrix (q/k/v with the fan of the fused 3C x C
matrix), zero attention biases, N(0, 1) embeddings, PyTorch's default Linear elsewhere, logit
scales 1.0 (used as exp(s)).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxris.models.layers import axes, dense, layer_norm
from jaxris.models.ris.bridge.position import sine_position_encoding
from jaxris.models.sam.common import Embedding
from jaxris.ops.resize import resize_2d

__all__ = ["Dfam", "MultiheadAttention", "attention_mask"]

_EPS = 1e-7  # the official normalisation v / (|v| + 1e-7)


def _torch_linear(din: int, dout: int, names: tuple[str | None, str | None], *, rngs: nnx.Rngs, dtype=None):
  """nn.Linear with PyTorch's default initialisation: weight and bias U(+-1/sqrt(din))."""
  bound = din ** -0.5
  return nnx.Linear(din, dout, kernel_init=nnx.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
                    bias_init=lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound),
                    dtype=dtype, rngs=rngs, **dense(*names))


def _xavier_linear(din: int, dout: int, names, *, rngs: nnx.Rngs, dtype=None, scale: float = 1.0,
                   bias: str = "torch"):
  """nn.Linear after ``xavier_uniform_(weight)``; the bias is zero (MHA) or PyTorch's default (FFN).
  `scale` 0.5 gives the bound of a q/k/v slice of torch's fused [3C, C] in_proj_weight."""
  bound = din ** -0.5
  bias_init = (nnx.initializers.zeros_init() if bias == "zeros" else
               lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound))
  return nnx.Linear(din, dout, kernel_init=nnx.initializers.variance_scaling(scale, "fan_avg", "uniform"),
                    bias_init=bias_init, dtype=dtype, rngs=rngs, **dense(*names))


class MultiheadAttention(nnx.Module):
  """torch.nn.MultiheadAttention (batch-first here, no dropout): q/k/v projections, heads,
  softmax(q k^T / sqrt(d) with blocked positions at -inf), out_proj.

  blocked: optional bool [B, Lq, Lk], True = not attended (torch's bool attn_mask convention),
  shared by every head. A row must not be blocked everywhere (DFAM unblocks such rows first).
  """

  def __init__(self, dim: int, num_heads: int, *, rngs: nnx.Rngs, dtype=None):
    assert dim % num_heads == 0, "num_heads must divide dim"
    self.num_heads = num_heads
    self.q_proj = _xavier_linear(dim, dim, ("embed", "qkv"), rngs=rngs, dtype=dtype, scale=0.5, bias="zeros")
    self.k_proj = _xavier_linear(dim, dim, ("embed", "qkv"), rngs=rngs, dtype=dtype, scale=0.5, bias="zeros")
    self.v_proj = _xavier_linear(dim, dim, ("embed", "qkv"), rngs=rngs, dtype=dtype, scale=0.5, bias="zeros")
    self.out_proj = _xavier_linear(dim, dim, ("heads", "embed"), rngs=rngs, dtype=dtype, bias="zeros")

  def __call__(self, q, k, v, blocked=None):
    split = lambda t: t.reshape(t.shape[0], t.shape[1], self.num_heads, -1)
    q, k, v = split(self.q_proj(q)), split(self.k_proj(k)), split(self.v_proj(v))
    q = q * jnp.asarray(q.shape[-1] ** -0.5, q.dtype)  # torch scales q before the product
    logits = jnp.einsum("bqnd,bknd->bnqk", q, k).astype(jnp.float32)
    if blocked is not None:
      logits = jnp.where(blocked[:, None], -jnp.inf, logits)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bnqk,bknd->bqnd", weights, v)
    return self.out_proj(out.reshape(out.shape[0], out.shape[1], -1))


class CrossAttentionLayer(nnx.Module):
  """Post-norm: LN(x + MHA(x + query_pos, memory + pos, memory))."""

  def __init__(self, dim: int, num_heads: int, *, rngs: nnx.Rngs, dtype=None):
    self.multihead_attn = MultiheadAttention(dim, num_heads, rngs=rngs, dtype=dtype)
    self.norm = layer_norm(dim, 1e-5, rngs, dtype)

  def __call__(self, x, memory, pos, query_pos=None, blocked=None):
    q = x if query_pos is None else x + query_pos
    return self.norm(x + self.multihead_attn(q, memory + pos, memory, blocked))


class SelfAttentionLayer(nnx.Module):
  """Post-norm: LN(x + MHA(x + query_pos, x + query_pos, x))."""

  def __init__(self, dim: int, num_heads: int, *, rngs: nnx.Rngs, dtype=None):
    self.self_attn = MultiheadAttention(dim, num_heads, rngs=rngs, dtype=dtype)
    self.norm = layer_norm(dim, 1e-5, rngs, dtype)

  def __call__(self, x, query_pos=None):
    q = x if query_pos is None else x + query_pos
    return self.norm(x + self.self_attn(q, q, x))


class FFNLayer(nnx.Module):
  """Post-norm: LN(x + linear2(ReLU(linear1(x))))."""

  def __init__(self, dim: int, hidden: int, *, rngs: nnx.Rngs, dtype=None):
    self.linear1 = _xavier_linear(dim, hidden, ("embed", "mlp"), rngs=rngs, dtype=dtype)
    self.linear2 = _xavier_linear(hidden, dim, ("mlp", "embed"), rngs=rngs, dtype=dtype)
    self.norm = layer_norm(dim, 1e-5, rngs, dtype)

  def __call__(self, x):
    return self.norm(x + self.linear2(jax.nn.relu(self.linear1(x))))


class MLP(nnx.Module):
  """``num_layers`` PyTorch-default Linears with ReLU between them (Mask2Former's MLP)."""

  def __init__(self, din: int, hidden: int, dout: int, num_layers: int, *, rngs: nnx.Rngs, dtype=None):
    dims = [din] + [hidden] * (num_layers - 1) + [dout]
    names = lambda i: ("embed", "mlp") if i % 2 == 0 else ("mlp", "embed")  # Megatron pairs
    self.layers = nnx.List([_torch_linear(a, b, names(i), rngs=rngs, dtype=dtype)
                            for i, (a, b) in enumerate(zip(dims[:-1], dims[1:]))])

  def __call__(self, x):
    for i, layer in enumerate(self.layers):
      x = layer(x)
      if i < len(self.layers) - 1:
        x = jax.nn.relu(x)
    return x


def attention_mask(mask_logits, size: tuple[int, int]):
  """[B, Q, H, W] mask logits -> bool [B, Q, h*w], True = blocked: bilinear (no antialias) to
  `size`, blocked where sigmoid < 0.5. Boolean, so no gradient flows (the official detach)."""
  small = resize_2d(jax.lax.stop_gradient(mask_logits), size, "bilinear")
  return (jax.nn.sigmoid(small) < 0.5).reshape(*small.shape[:2], -1)


def _unblock_full_rows(blocked):
  """Rows blocked at every position attend everywhere instead (the official fix before each CA)."""
  return blocked & ~jnp.all(blocked, axis=-1, keepdims=True)


def _normalise(v):
  return v / (jnp.linalg.norm(v, axis=-1, keepdims=True) + _EPS)


class Dfam(nnx.Module):
  """DFAM (official ``modeling/decoder/dfam.py``), optionally with the GRES no-target head.

  Full size (the defaults): 6,899,970 parameters; ``no_target_head=True`` adds ``nt_embed``
  (MLP 256 -> 256 -> 2, 66,306 parameters).
  """

  def __init__(self, hidden_dim: int = 256, num_queries: int = 100, num_heads: int = 8,
               dim_feedforward: int = 1024, num_layers: int = 3, num_levels: int = 3,
               clip_text_dim: int = 768, bert_dim: int = 256, no_target_head: bool = False,
               *, rngs: nnx.Rngs, dtype=None):
    self.hidden_dim, self.num_heads, self.num_layers, self.num_levels = hidden_dim, num_heads, num_layers, num_levels
    mk = lambda cls, *a: nnx.List([cls(hidden_dim, *a, rngs=rngs, dtype=dtype) for _ in range(num_layers)])
    # SAM stream (x) and CLIP stream (y, the official "...2" lists).
    self.CA_layers = mk(CrossAttentionLayer, num_heads)
    self.SA_layers = mk(SelfAttentionLayer, num_heads)
    self.transformer_ffn_layers = mk(FFNLayer, dim_feedforward)
    self.CA_layers2 = mk(CrossAttentionLayer, num_heads)
    self.SA_layers2 = mk(SelfAttentionLayer, num_heads)
    self.transformer_ffn_layers2 = mk(FFNLayer, dim_feedforward)
    self.decoder_norm1 = layer_norm(hidden_dim, 1e-5, rngs, dtype)  # mask head
    self.decoder_norm2 = layer_norm(hidden_dim, 1e-5, rngs, dtype)  # semantic head
    self.query_feat = Embedding(num_queries, hidden_dim, rngs=rngs)
    self.query_embed = Embedding(num_queries, hidden_dim, rngs=rngs)
    self.level_embed = Embedding(num_levels, hidden_dim, rngs=rngs)  # shared by both streams
    self.v_embed = _torch_linear(hidden_dim, hidden_dim, ("embed", "mlp"), rngs=rngs, dtype=dtype)
    self.to_logits = _torch_linear(hidden_dim, clip_text_dim, ("mlp", "embed"), rngs=rngs, dtype=dtype)
    self.to_logits_bert = _torch_linear(hidden_dim, bert_dim, ("mlp", "embed"), rngs=rngs, dtype=dtype)
    self.mask_embed = MLP(hidden_dim, hidden_dim, hidden_dim, 3, rngs=rngs, dtype=dtype)
    self.logit_scale = nnx.Param(jnp.ones(()), **axes())            # BERT logits, used as exp(s)
    self.logit_scale_condsim = nnx.Param(jnp.ones(()), **axes())    # CLIP logits
    self.nt_embed = MLP(hidden_dim, hidden_dim, 2, 2, rngs=rngs, dtype=dtype) if no_target_head else None

  # -- heads ---------------------------------------------------------------------------------

  def mask_head(self, x, sam_embed):
    """[B, Q, C] x [B, H, W, C] -> mask logits [B, Q, H, W], against SAM's raw embedding E."""
    emb = self.mask_embed(self.decoder_norm1(x))
    return jnp.einsum("bqc,bhwc->bqhw", emb, sam_embed.astype(emb.dtype))

  def semantic_head(self, y, text_all, bert_cls):
    """-> (clip logits [B, Q, B + K], BERT [CLS] logits [B, Q, B], object embedding o [B, Q, C])."""
    obj = self.v_embed(self.decoder_norm2(y))
    clip = _normalise(self.to_logits(obj))
    clip_logits = jnp.exp(self.logit_scale_condsim[...]) * jnp.einsum("bqd,nd->bqn", clip, _normalise(text_all))
    bert = _normalise(self.to_logits_bert(obj))
    bert_logits = jnp.exp(self.logit_scale[...]) * jnp.einsum("bqd,nd->bqn", bert, _normalise(bert_cls))
    return clip_logits, bert_logits, obj

  # -- forward -------------------------------------------------------------------------------

  def __call__(self, clip_feats: Sequence[jax.Array], sam_feats: Sequence[jax.Array], sam_embed: jax.Array,
               bert_cls: jax.Array, sot_vec: jax.Array, class_text: jax.Array,
               attn_masks: Sequence[tuple[jax.Array, jax.Array]] | None = None) -> dict:
    """
    clip_feats: the pixel decoder's multi-scale outputs, coarse -> fine, [B, h_i, w_i, C] (12², 24², 48²).
    sam_feats: the SAM pyramid, coarse -> fine, [B, h_i, w_i, C] (S6 16², S5 32², S4 64²).
    sam_embed: SAM's image embedding E [B, 64, 64, C] (the mask head's dot product).
    bert_cls: L_cls [B, bert_dim] (BERT [CLS] after lang_mlp).
    sot_vec: the CLIP start-of-text feature [clip_text_dim]; class_text: T134 [K, clip_text_dim].
    attn_masks: optional, per layer (sam_blocked [B, Q, hw_sam_i], clip_blocked [B, Q, hw_clip_i]),
      True = blocked, used instead of the masks derived from the previous prediction.

    Returns a dict: ``pred_masks`` [B, Q, H, W], ``pred_logits`` [B, Q, B + K] (CLIP stream),
    ``pred_logits_bertcls`` [B, Q, B] (final layer); ``aux_outputs``: the same three keys for the
    query-only prediction and layers 1 .. L-1; ``obj_emb`` o_L [B, Q, C]; ``attn_masks``: the
    (sam, clip) blocked masks each layer used (after unblocking full rows); ``nt_label`` [B, 2]
    with the no-target head.
    """
    if len(clip_feats) != self.num_levels or len(sam_feats) != self.num_levels:
      raise ValueError(f"DFAM takes {self.num_levels} levels per stream, got {len(clip_feats)} and {len(sam_feats)}")
    b = sam_embed.shape[0]
    level = self.level_embed.weight[...]

    def memory(feats):
      src = [f.reshape(b, -1, f.shape[-1]) + level[i].astype(f.dtype) for i, f in enumerate(feats)]
      pos = [jnp.asarray(sine_position_encoding(*f.shape[1:3], num_feats=self.hidden_dim // 2), f.dtype)
             .reshape(1, -1, self.hidden_dim) for f in feats]
      return src, pos, [f.shape[1:3] for f in feats]

    src_c, pos_c, size_c = memory(clip_feats)
    src_s, pos_s, size_s = memory(sam_feats)
    text_all = jnp.concatenate([jnp.broadcast_to(sot_vec, (b, sot_vec.shape[-1])), class_text], axis=0)

    query_pos = jnp.broadcast_to(self.query_embed.weight[...], (b, *self.query_embed.weight.shape))
    x = jnp.broadcast_to(self.query_feat.weight[...], (b, *self.query_feat.weight.shape))

    def predict(x, y):
      masks = self.mask_head(x, sam_embed)
      clip_logits, bert_logits, obj = self.semantic_head(y, text_all, bert_cls)
      return {"pred_masks": masks, "pred_logits": clip_logits, "pred_logits_bertcls": bert_logits}, obj

    preds = []
    pred, obj = predict(x, x)
    preds.append(pred)
    used = []
    for i in range(self.num_layers):
      lvl = i % self.num_levels
      if attn_masks is None:
        am_s, am_c = attention_mask(pred["pred_masks"], size_s[lvl]), attention_mask(pred["pred_masks"], size_c[lvl])
      else:
        am_s, am_c = attn_masks[i]
      am_s, am_c = _unblock_full_rows(am_s), _unblock_full_rows(am_c)
      used.append((am_s, am_c))
      # SAM stream
      x = self.CA_layers[i](x, src_s[lvl], pos_s[lvl], query_pos, am_s)
      x = self.SA_layers[i](x, query_pos)
      x = self.transformer_ffn_layers[i](x)
      # CLIP stream: restarts from x, no query positions, never written back into x
      y = self.CA_layers2[i](x, src_c[lvl], pos_c[lvl], None, am_c)
      y = self.SA_layers2[i](y)
      y = self.transformer_ffn_layers2[i](y)
      pred, obj = predict(x, y)
      preds.append(pred)

    out = {**preds[-1], "aux_outputs": preds[:-1], "obj_emb": obj, "attn_masks": used}
    if self.nt_embed is not None:
      out["nt_label"] = jnp.max(self.nt_embed(obj), axis=1)  # max over the queries (ReLA: mean)
    return out
