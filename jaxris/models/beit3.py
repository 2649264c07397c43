"""BEiT-3 multiway transformer in Flax NNX, a faithful port of torchscale's ``BEiT3``.

BEiT-3 encodes an image, a text, or both jointly with one stack of pre-LN transformer
layers whose attention is shared but whose weights are "multiway": every Linear, LayerNorm
and feed-forward block has a vision expert ``A`` and a text expert ``B``. The joint sequence
is ``[vision CLS, patches..., text tokens...]``; tokens before the split go through ``A``,
the rest through ``B``. Module paths mirror the torchscale state_dict
(``encoder.layers.N.self_attn.q_proj.A``, ``encoder.layers.N.ffn.B.fc1`` ...), so the
converter in ``jaxris/weights/beit3.py`` is a table of renames and transposes.

  cfg = BEiT3Config.large()                    # unilm's _get_large_config()
  model = BEiT3(cfg, rngs=nnx.Rngs(0))
  out = model(text_ids, images, text_mask)     # out.encoder_out [B, Nv+Nt, D]
  vision_cls = out.encoder_out[:, 0]           # what EVF-SAM feeds to its projector

Inputs: ``images`` NHWC float [B, img_size, img_size, 3] already normalised (EVF-SAM:
bicubic resize to 224, mean = std = 0.5); ``text_ids`` int [B, T] from
``jaxris.text.xlmr_tokenizer``; ``text_mask`` int/bool [B, T], 1 = real token, 0 = padding
(the tokenizer's ``attention_mask``; torchscale's ``text_padding_position`` is its inverse).

What torchscale does and this port keeps (checked against torchscale 0.2.0/0.3.0, whose
BEiT-3 code paths are identical):
- positions start at 2 (fairseq) in both tables, counted separately for the vision part
  (table A, num_patches + 1 + 2 rows) and the text part (table B, max_source_positions rows),
  whatever the padding; there is no embedding scale and no embedding LayerNorm;
- padded text positions are zeroed after the embedding and masked out as attention keys;
- q is scaled by head_dim**-0.5 after its bias, before the q.k product; softmax in float32;
- sub-LayerNorm (``subln``): ``inner_attn_ln`` on the attention output before ``out_proj`` and
  ``ffn_layernorm`` after the activation inside the FFN; the FFN activation is the exact erf
  GELU, evaluated in float32;
- LayerNorm eps 1e-5 everywhere; the output goes through the multiway ``encoder.layer_norm``.

One deliberate difference: a padded key gets the most negative float instead of -inf, so a
row whose keys are all padding attends uniformly instead of producing NaN (torchscale). The
two agree whenever a row has at least one real key, which the tokenizer guarantees.

Parameters are float32; ``dtype`` (e.g. jnp.bfloat16) is the compute dtype. Drop-path (the
only stochastic part of the official configs: dropout rates are 0) is off in eval mode, which
is how the model starts; use ``model.train()`` and pass ``rngs=nnx.Rngs(dropout=key)``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxris.models.layers import axes, conv, dense, embedding, layer_norm, shard_batch
from jaxris.ops.activations import gelu
from jaxris.ops.attention import attention

# torchscale's PositionalEmbedding numbers positions from 2, as fairseq does (0 and 1 were
# fairseq's padding slots); the first two rows of both tables are never read.
POSITION_OFFSET = 2


@dataclasses.dataclass(frozen=True)
class BEiT3Config:
  """The sizes of a BEiT-3 encoder; field names are torchscale's ``EncoderConfig`` names.

  The rest of torchscale's EncoderConfig is fixed to what the official ``beit3`` configs use:
  multiway, subln (pre-LN with sub-LayerNorms), normalize_output, no embedding scale, no
  layernorm_embedding, no output layer, gelu, no relative position bias, dropout rates 0.
  """

  encoder_embed_dim: int = 768
  encoder_attention_heads: int = 12
  encoder_ffn_embed_dim: int = 3072
  encoder_layers: int = 12
  vocab_size: int = 64010
  img_size: int = 224
  patch_size: int = 16
  in_chans: int = 3
  max_source_positions: int = 1024   # rows of the text position table
  layernorm_eps: float = 1e-5
  drop_path_rate: float = 0.0        # used only in training mode

  def __post_init__(self):
    if self.encoder_embed_dim % self.encoder_attention_heads:
      raise ValueError(f"encoder_embed_dim {self.encoder_embed_dim} is not a multiple of "
                       f"encoder_attention_heads {self.encoder_attention_heads}")
    if self.img_size % self.patch_size:
      raise ValueError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")

  @classmethod
  def base(cls, **overrides) -> "BEiT3Config":
    """unilm beit3/modeling_utils.py ``_get_base_config``: 12 layers, 768 wide, 12 heads."""
    return cls(**{**dict(encoder_embed_dim=768, encoder_attention_heads=12, encoder_ffn_embed_dim=3072,
                         encoder_layers=12), **overrides})

  @classmethod
  def large(cls, **overrides) -> "BEiT3Config":
    """unilm beit3/modeling_utils.py ``_get_large_config``: 24 layers, 1024 wide, 16 heads."""
    return cls(**{**dict(encoder_embed_dim=1024, encoder_attention_heads=16, encoder_ffn_embed_dim=4096,
                         encoder_layers=24), **overrides})

  @property
  def num_patches(self) -> int:
    return (self.img_size // self.patch_size) ** 2

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "BEiT3Config":
    return cls(**d)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class BEiT3Output:
  """What ``BEiT3`` returns (a pytree, so it can leave jax.jit)."""

  encoder_out: jax.Array  # [B, Nv + Nt, D] after the final multiway LayerNorm
  # torchscale's convention: -1 image only, 0 text only, else Nv (= num_patches + 1, the
  # number of vision tokens in front of the text). A static Python int, also under jit.
  multiway_split_position: int = dataclasses.field(metadata=dict(static=True))


# BEiT3Wrapper (unilm) re-initialises every Linear with a normal of std 0.02 truncated at
# +-0.02 (timm's trunc_normal_ takes absolute bounds, here one std), which overrides the
# sqrt(log(2L)) "subln" gain torchscale's Encoder applied to fc1/fc2/out_proj/v_proj just
# before. So the effective official init has no subln gain, and neither has ours.
_linear_init = nnx.initializers.truncated_normal(stddev=0.02, lower=-1.0, upper=1.0)


def _linear(d_in: int, d_out: int, rngs: nnx.Rngs, dtype, names: tuple[str, str]) -> nnx.Linear:
  return nnx.Linear(d_in, d_out, kernel_init=_linear_init, dtype=dtype, rngs=rngs, **dense(*names))


def _layer_norm(dim: int, cfg: BEiT3Config, rngs: nnx.Rngs, dtype) -> nnx.LayerNorm:
  return layer_norm(dim, cfg.layernorm_eps, rngs, dtype)


class _Multiway(nnx.Module):
  """Two copies of a module: ``A`` for the first ``n_vision`` tokens, ``B`` for the rest.

  torchscale's MultiwayNetwork: the sequence is split along axis 1, each expert sees only its
  part, and the results are concatenated back. An image-only input is all ``A``, a text-only
  one all ``B``.
  """

  def __init__(self, make):
    self.A = make()
    self.B = make()

  def __call__(self, x, n_vision: int):
    if n_vision == x.shape[1]:
      return self.A(x)
    if n_vision == 0:
      return self.B(x)
    return jnp.concatenate([self.A(x[:, :n_vision]), self.B(x[:, n_vision:])], axis=1)


class _SelfAttention(nnx.Module):
  """Multi-head self-attention with multiway projections and a multiway sub-LayerNorm."""

  def __init__(self, cfg: BEiT3Config, *, rngs: nnx.Rngs, dtype=None):
    d = cfg.encoder_embed_dim
    self.num_heads = cfg.encoder_attention_heads
    linear = functools.partial(_linear, d, d, rngs, dtype, ("embed", "qkv"))
    self.k_proj = _Multiway(linear)
    self.v_proj = _Multiway(linear)
    self.q_proj = _Multiway(linear)
    self.out_proj = _Multiway(functools.partial(_linear, d, d, rngs, dtype, ("heads", "embed")))
    self.inner_attn_ln = _Multiway(functools.partial(_layer_norm, d, cfg, rngs, dtype))  # over heads x kv

  def __call__(self, x, n_vision: int, key_mask):
    b, n, d = x.shape
    head_dim = d // self.num_heads
    heads = lambda y: y.reshape(b, n, self.num_heads, head_dim)
    # torchscale scales q (bias included) before the product, not the logits after it.
    q = heads(self.q_proj(x, n_vision) * head_dim**-0.5)
    k = heads(self.k_proj(x, n_vision))
    v = heads(self.v_proj(x, n_vision))
    out = attention(q, k, v, scale=1.0, key_mask=key_mask).reshape(b, n, d)
    return self.out_proj(self.inner_attn_ln(out, n_vision), n_vision)


class _FeedForward(nnx.Module):
  """fc1 -> exact GELU (in float32) -> ffn_layernorm (subln) -> fc2; one expert of ``ffn``."""

  def __init__(self, cfg: BEiT3Config, *, rngs: nnx.Rngs, dtype=None):
    self.fc1 = _linear(cfg.encoder_embed_dim, cfg.encoder_ffn_embed_dim, rngs, dtype, ("embed", "mlp"))
    self.fc2 = _linear(cfg.encoder_ffn_embed_dim, cfg.encoder_embed_dim, rngs, dtype, ("mlp", "embed"))
    self.ffn_layernorm = _layer_norm(cfg.encoder_ffn_embed_dim, cfg, rngs, dtype)

  def __call__(self, x):
    h = self.fc1(x)
    h = gelu(h.astype(jnp.float32)).astype(h.dtype)  # F.gelu: exact, not the tanh approximation
    return self.fc2(self.ffn_layernorm(h))


class _EncoderLayer(nnx.Module):
  """Pre-LN layer: x + attn(LN(x)), then x + ffn(LN(x)), each branch with drop-path."""

  def __init__(self, cfg: BEiT3Config, drop_path: float, *, rngs: nnx.Rngs, dtype=None):
    d = cfg.encoder_embed_dim
    self.self_attn = _SelfAttention(cfg, rngs=rngs, dtype=dtype)
    self.self_attn_layer_norm = _Multiway(functools.partial(_layer_norm, d, cfg, rngs, dtype))
    self.ffn = _Multiway(functools.partial(_FeedForward, cfg, rngs=rngs, dtype=dtype))
    self.final_layer_norm = _Multiway(functools.partial(_layer_norm, d, cfg, rngs, dtype))
    # Drop-path drops a whole sample's branch: one mask value per sample, broadcast over
    # tokens and channels, kept values scaled by 1/(1-p), as timm's drop_path does.
    self.drop_path = nnx.Dropout(drop_path, broadcast_dims=(1, 2), deterministic=True)

  def __call__(self, x, n_vision: int, key_mask, rngs=None):
    x = shard_batch(x)
    h = self.self_attn(self.self_attn_layer_norm(x, n_vision), n_vision, key_mask)
    x = x + self.drop_path(h, rngs=rngs)
    h = self.ffn(self.final_layer_norm(x, n_vision), n_vision)
    return x + self.drop_path(h, rngs=rngs)


class _PositionalEmbeddings(nnx.Module):
  """torchscale's MutliwayEmbedding of two PositionalEmbedding tables: A vision, B text."""

  def __init__(self, cfg: BEiT3Config, *, rngs: nnx.Rngs, dtype=None):
    # nn.Embedding's default init, N(0, 1): BEiT3Wrapper does not re-initialise embeddings.
    embed = functools.partial(nnx.Embed, features=cfg.encoder_embed_dim, dtype=dtype,
                              embedding_init=nnx.initializers.normal(1.0), rngs=rngs, **embedding(None))
    self.A = embed(cfg.num_patches + 1 + POSITION_OFFSET)
    self.B = embed(cfg.max_source_positions)

  def __call__(self, n_vision: int, n_text: int):
    """[1, n_vision + n_text, D]: each part numbered from POSITION_OFFSET on its own."""
    parts = [table(jnp.arange(POSITION_OFFSET, POSITION_OFFSET + n)[None])
             for table, n in ((self.A, n_vision), (self.B, n_text)) if n]
    return jnp.concatenate(parts, axis=1)


class _Encoder(nnx.Module):

  def __init__(self, cfg: BEiT3Config, *, rngs: nnx.Rngs, dtype=None):
    self.embed_positions = _PositionalEmbeddings(cfg, rngs=rngs, dtype=dtype)
    rates = np.linspace(0, cfg.drop_path_rate, cfg.encoder_layers)  # as torchscale, by depth
    self.layers = nnx.List([_EncoderLayer(cfg, float(r), rngs=rngs, dtype=dtype) for r in rates])
    self.layer_norm = _Multiway(functools.partial(_layer_norm, cfg.encoder_embed_dim, cfg, rngs, dtype))


class _VisionEmbedding(nnx.Module):
  """16x16 patches -> Conv projection, optional mask tokens (BEiT MIM), [CLS] in front."""

  def __init__(self, cfg: BEiT3Config, *, rngs: nnx.Rngs, dtype=None):
    p, d = cfg.patch_size, cfg.encoder_embed_dim
    # nn.Conv2d's default init (kaiming_uniform with a=sqrt(5): U(+-1/sqrt(fan_in))).
    self.proj = nnx.Conv(cfg.in_chans, d, kernel_size=(p, p), strides=(p, p), padding="VALID",
                         kernel_init=nnx.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
                         dtype=dtype, rngs=rngs, **conv(None, "conv_out"))
    self.mask_token = nnx.Param(jnp.zeros((1, 1, d)), **axes(None, None, "embed"))
    self.cls_token = nnx.Param(jnp.zeros((1, 1, d)), **axes(None, None, "embed"))

  def __call__(self, images, masked_position=None):
    b = images.shape[0]
    x = self.proj(images)
    x = x.reshape(b, -1, x.shape[-1])
    if masked_position is not None:
      w = masked_position.astype(x.dtype)[..., None]
      x = x * (1 - w) + self.mask_token.get_value().astype(x.dtype) * w
    cls = jnp.broadcast_to(self.cls_token.get_value().astype(x.dtype), (b, 1, x.shape[-1]))
    return jnp.concatenate([cls, x], axis=1)


class BEiT3(nnx.Module):
  """torchscale's ``BEiT3`` (multiway encoder over image, text or both) in Flax NNX."""

  def __init__(self, config: BEiT3Config, *, rngs: nnx.Rngs, dtype=None):
    self.config = config
    d = config.encoder_embed_dim
    # TextEmbedding.reset_parameters: N(0, D^-0.5), no padding row.
    self.text_embed = nnx.Embed(config.vocab_size, d, dtype=dtype,
                                embedding_init=nnx.initializers.normal(d**-0.5), rngs=rngs, **embedding("vocab"))
    self.vision_embed = _VisionEmbedding(config, rngs=rngs, dtype=dtype)
    self.encoder = _Encoder(config, rngs=rngs, dtype=dtype)

  def _check_inputs(self, text_ids, images, text_mask, masked_position):
    """Shape errors, raised before any compute."""
    cfg = self.config
    if text_ids is None and images is None:
      raise ValueError("BEiT3 needs text_ids, images or both")
    if images is not None and tuple(images.shape[1:]) != (cfg.img_size, cfg.img_size, cfg.in_chans):
      raise ValueError(f"images must be [B, {cfg.img_size}, {cfg.img_size}, {cfg.in_chans}] (NHWC), got "
                       f"{images.shape}; resize to img_size first (EVF-SAM: bicubic to 224, mean=std=0.5)")
    if masked_position is not None:
      if images is None or masked_position.shape != (images.shape[0], cfg.num_patches):
        raise ValueError(f"vision_masked_position must be [B, {cfg.num_patches}] next to images, got "
                         f"{masked_position.shape}")
    if text_ids is None:
      return
    if text_ids.ndim != 2:
      raise ValueError(f"text_ids must be [batch, length], got shape {text_ids.shape}")
    if text_ids.shape[1] + POSITION_OFFSET > cfg.max_source_positions:
      raise ValueError(f"text length {text_ids.shape[1]} exceeds the {cfg.max_source_positions - POSITION_OFFSET} "
                       "positions of the text table; truncate the text (the tokenizer does)")
    if text_mask is not None and text_mask.shape != text_ids.shape:
      raise ValueError(f"text_mask shape {text_mask.shape} != text_ids shape {text_ids.shape}")
    if images is not None and images.shape[0] != text_ids.shape[0]:
      raise ValueError(f"images and text_ids have different batch sizes: {images.shape[0]} != {text_ids.shape[0]}")

  def __call__(self, text_ids=None, images=None, text_mask=None, *, vision_masked_position=None,
               rngs: nnx.Rngs | None = None) -> BEiT3Output:
    """text_ids int [B, T] and/or images float NHWC [B, H, W, C]; text_mask 1 = real token.

    ``vision_masked_position`` (float/bool [B, num_patches], 1 = replace the patch by the
    mask token) is BEiT's masked-image-modeling input; ``rngs`` (with a 'dropout' stream) is
    needed only in training mode with drop_path_rate > 0.
    """
    self._check_inputs(text_ids, images, text_mask, vision_masked_position)
    parts, valid = [], []
    if images is not None:
      parts.append(self.vision_embed(images, vision_masked_position))
      valid.append(jnp.ones(parts[-1].shape[:2], bool))
    if text_ids is not None:
      parts.append(self.text_embed(text_ids))
      valid.append(jnp.ones(text_ids.shape, bool) if text_mask is None else text_mask.astype(bool))
    n_vision = parts[0].shape[1] if images is not None else 0
    n_text = text_ids.shape[1] if text_ids is not None else 0
    x = jnp.concatenate(parts, axis=1)
    key_mask = jnp.concatenate(valid, axis=1)

    x = x + self.encoder.embed_positions(n_vision, n_text).astype(x.dtype)
    x = x * key_mask[..., None].astype(x.dtype)  # torchscale zeroes padded positions here
    for layer in self.encoder.layers:
      x = layer(x, n_vision, key_mask, rngs)
    x = self.encoder.layer_norm(x, n_vision)

    split = -1 if text_ids is None else (0 if images is None else n_vision)
    return BEiT3Output(encoder_out=x, multiway_split_position=split)


def abstract_model(config: BEiT3Config, dtype=None) -> BEiT3:
  """``nnx.eval_shape(lambda: BEiT3(config, ...))`` in about a second, whatever the depth.

  Under one eval_shape trace every RNG draw of flax 0.12 (``RngStream`` bumps its counter,
  then compares shardings of tracers) makes JAX search and pretty-print the trace so far, so
  one trace of a deep model is quadratic: a minute for BEiT-3 large. All layers have the same
  shapes, so one layer is traced and copied; only the drop-path rate differs between copies.
  Converters use this for parameter shapes and to build a model without a random init.
  """
  model = nnx.eval_shape(lambda: BEiT3(dataclasses.replace(config, encoder_layers=0), rngs=nnx.Rngs(0),
                                       dtype=dtype))
  layer = nnx.eval_shape(lambda: _EncoderLayer(config, 0.0, rngs=nnx.Rngs(0), dtype=dtype))
  layers = []
  for rate in np.linspace(0, config.drop_path_rate, config.encoder_layers):
    layers.append(nnx.clone(layer))
    layers[-1].drop_path.rate = float(rate)
  model.encoder.layers = nnx.List(layers)
  model.config = config
  return model
