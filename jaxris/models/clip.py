"""CLIP's vision and text towers in Flax NNX, a faithful port of transformers' ``CLIPModel``.

The SAM+CLIP bridge (shared/specs/bridge.md) feeds SAM with the patch tokens of a frozen OpenAI
CLIP ViT-L/14@336 (the last block's output, before ``post_layernorm``, class token dropped) and
precomputes text constants with the text tower. Attribute names mirror transformers' state_dict
(``vision_model.embeddings.patch_embedding``, ``text_model.encoder.layers.N.self_attn.q_proj``,
``visual_projection`` ...), so converting a Hugging Face checkpoint is a table of renames and
transposes (jaxris/weights/clip.py, which also reads OpenAI's own ``.pt`` layout). Any size is
built from a Hugging Face config; ``PRESETS`` holds the two OpenAI models this project uses.

  cfg = CLIPConfig.from_hf_config("path/to/hf_dir")          # or PRESETS["vit_l_14_336"]
  model = CLIPModel(cfg, rngs=nnx.Rngs(0))
  v = model.vision_model(pixels)       # pixels [B, 336, 336, 3] NHWC, CLIP-normalised
  v.hidden_states[-1][:, 1:]           # [B, 576, 1024]: the bridge's CLIP features
  t = model.text_model(input_ids)      # t.last_hidden_state (after final_layer_norm), t.pooler_output
  model.get_image_features(pixels), model.get_text_features(input_ids)   # projected embeddings

What transformers does and this port keeps:
- pre-LN blocks (layer_norm1 -> attention -> residual, layer_norm2 -> MLP -> residual), QuickGELU
  x * sigmoid(1.702 x) unless the config names another activation, LayerNorm eps 1e-5;
- vision: conv patches without bias, class token in front, learned positions, ``pre_layrnorm``
  before the blocks; ``last_hidden_state`` is the last block's output (no norm) and the pooled
  output is ``post_layernorm`` of the class token; ``hidden_states`` starts after pre_layrnorm;
- text: token + position embeddings, causal attention (and key padding when an attention mask is
  given; OpenAI's CLIP has none, and with right padding the two agree on every real token),
  ``final_layer_norm`` on every position; the pooled output is the end-of-text position: the
  argmax of the ids when ``eos_token_id == 2`` (the legacy configs of the OpenAI checkpoints on
  the hub, where the end-of-text id 49407 is the largest id) and the first ``eos_token_id``
  otherwise, as transformers' CLIPTextTransformer does.
- projections are bias-free linears; ``logit_scale`` is stored as its log.

A padded key gets the most negative float instead of -inf, so a row without any allowed key
attends uniformly instead of producing NaN; with a causal mask every row has one (itself).
Parameters are float32; ``dtype`` (e.g. jnp.bfloat16) is the compute dtype, with float32
accumulation, softmax and LayerNorm statistics. There is no dropout (CLIP's rates are 0; a
config asking for attention dropout is refused).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from jaxris.models.layers import axes, conv, dense, embedding, layer_norm, shard_batch
from jaxris.ops.activations import gelu
from jaxris.ops.resize import resize_2d

# transformers' ACT2FN names CLIP configs use -> functions ("gelu" is the exact erf form).
_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu": gelu,
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
}
LEGACY_EOS_TOKEN_ID = 2  # transformers: eos_token_id == 2 means "pool at the argmax of the ids"


def _read_config(config: dict[str, Any] | str | os.PathLike) -> dict[str, Any]:
  if isinstance(config, dict):
    return config
  path = os.fspath(config)
  if os.path.isdir(path):
    path = os.path.join(path, "config.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} not found: expected a Hugging Face CLIP config.json")
  with open(path) as f:
    return json.load(f)


def _fields(cls, config: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
  """The keys of `config` that are fields of `cls`, refusing what we do not implement."""
  if config.get("attention_dropout", 0.0):
    raise ValueError(f"attention_dropout {config['attention_dropout']} is not supported (CLIP uses 0)")
  if not isinstance(config.get("hidden_act", "quick_gelu"), str):
    raise ValueError(f"hidden_act must be a name, got {config['hidden_act']!r}")
  names = {f.name for f in dataclasses.fields(cls)}
  kwargs = {k: v for k, v in config.items() if k in names}
  kwargs.update(overrides)
  return kwargs


def _square(value, what: str) -> int:
  if isinstance(value, (list, tuple)):
    if len(value) != 2 or value[0] != value[1]:
      raise ValueError(f"{what} {value} is not square: only square images and patches are supported")
    value = value[0]
  return int(value)


def _check_tower(cfg) -> None:
  if cfg.hidden_size % cfg.num_attention_heads:
    raise ValueError(f"hidden_size {cfg.hidden_size} is not a multiple of num_attention_heads "
                     f"{cfg.num_attention_heads}")
  if cfg.hidden_act not in _ACTIVATIONS:
    raise ValueError(f"hidden_act '{cfg.hidden_act}' is not supported; known: {sorted(_ACTIVATIONS)}")


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig:
  """The sizes of a CLIP vision tower; defaults are transformers' CLIPVisionConfig (ViT-B/32)."""

  hidden_size: int = 768
  intermediate_size: int = 3072
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  num_channels: int = 3
  image_size: int = 224
  patch_size: int = 32
  hidden_act: str = "quick_gelu"
  layer_norm_eps: float = 1e-5

  def __post_init__(self):
    _check_tower(self)
    if self.image_size % self.patch_size:
      raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")

  @property
  def grid(self) -> int:
    return self.image_size // self.patch_size

  @property
  def num_positions(self) -> int:
    return self.grid**2 + 1

  @classmethod
  def from_hf_config(cls, config: dict[str, Any] | str | os.PathLike, **overrides) -> "CLIPVisionConfig":
    """A Hugging Face CLIPVisionConfig, or the ``vision_config`` of a CLIPConfig (dict, file or dir)."""
    config = _read_config(config)
    config = config.get("vision_config", config) if "vision_config" in config else config
    kwargs = _fields(cls, config, overrides)
    for key in ("image_size", "patch_size"):
      if key in kwargs:
        kwargs[key] = _square(kwargs[key], key)
    return cls(**kwargs)


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig:
  """The sizes of a CLIP text tower; defaults are transformers' CLIPTextConfig (ViT-B/32's)."""

  vocab_size: int = 49408
  hidden_size: int = 512
  intermediate_size: int = 2048
  num_hidden_layers: int = 12
  num_attention_heads: int = 8
  max_position_embeddings: int = 77
  hidden_act: str = "quick_gelu"
  layer_norm_eps: float = 1e-5
  bos_token_id: int = 49406
  eos_token_id: int = 49407  # 2 (legacy hub configs): pool at the argmax of the ids
  pad_token_id: int = 1

  def __post_init__(self):
    _check_tower(self)

  @classmethod
  def from_hf_config(cls, config: dict[str, Any] | str | os.PathLike, **overrides) -> "CLIPTextConfig":
    """A Hugging Face CLIPTextConfig, or the ``text_config`` of a CLIPConfig (dict, file or dir)."""
    config = _read_config(config)
    config = config["text_config"] if "text_config" in config else config
    kwargs = _fields(cls, config, overrides)
    if isinstance(kwargs.get("eos_token_id"), list):
      raise ValueError(f"eos_token_id must be one id, got {kwargs['eos_token_id']}")
    return cls(**kwargs)


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
  """Both towers and the shared embedding size; defaults are transformers' CLIPConfig (ViT-B/32)."""

  vision: CLIPVisionConfig = CLIPVisionConfig()
  text: CLIPTextConfig = CLIPTextConfig()
  projection_dim: int = 512
  logit_scale_init_value: float = 2.6592

  @classmethod
  def from_hf_config(cls, config: dict[str, Any] | str | os.PathLike, **overrides) -> "CLIPConfig":
    """A Hugging Face CLIPConfig (``model_type`` "clip": a dict, a ``config.json`` or its directory).

    Keys the towers do not use (architectures, torch_dtype, ...) are ignored; options that would
    change the computation in a way we do not implement are refused, not ignored.
    """
    config = _read_config(config)
    if config.get("model_type", "clip") != "clip":
      raise ValueError(f"model_type '{config['model_type']}' is not a full CLIP model ('clip'): give the "
                       "config of a CLIPModel (both towers and the projections)")
    kwargs = {k: config[k] for k in ("projection_dim", "logit_scale_init_value") if k in config}
    kwargs.update(overrides)
    return cls(vision=CLIPVisionConfig.from_hf_config(config.get("vision_config") or {}),
               text=CLIPTextConfig.from_hf_config(config.get("text_config") or {}), **kwargs)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "CLIPConfig":
    """The inverse of ``to_dict`` (what a converted directory's config.json holds)."""
    d = dict(d)
    return cls(vision=CLIPVisionConfig(**d.pop("vision")), text=CLIPTextConfig(**d.pop("text")), **d)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


# OpenAI's checkpoints (clip.load names "ViT-L/14@336px", "ViT-B/16"; on the hub
# openai/clip-vit-large-patch14-336 and openai/clip-vit-base-patch16). Heads = width / 64.
PRESETS: dict[str, CLIPConfig] = {
    "vit_l_14_336": CLIPConfig(
        vision=CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                num_attention_heads=16, image_size=336, patch_size=14),
        text=CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                            eos_token_id=LEGACY_EOS_TOKEN_ID),
        projection_dim=768),
    "vit_b_16": CLIPConfig(
        vision=CLIPVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                num_attention_heads=12, image_size=224, patch_size=16),
        text=CLIPTextConfig(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8,
                            eos_token_id=LEGACY_EOS_TOKEN_ID),
        projection_dim=512),
}


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class CLIPTowerOutput:
  """What a tower returns (a pytree, so it can leave jax.jit)."""

  last_hidden_state: jax.Array          # vision: last block, no norm; text: after final_layer_norm
  hidden_states: tuple[jax.Array, ...]  # the blocks' input (vision: after pre_layrnorm), then each block's output
  pooler_output: jax.Array              # vision: post_layernorm(class token); text: the end-of-text position


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class CLIPOutput:
  """What ``CLIPModel`` returns: transformers' CLIPOutput without the loss."""

  logits_per_image: jax.Array   # [B_img, B_txt] = exp(logit_scale) * cosine similarity
  logits_per_text: jax.Array    # [B_txt, B_img]
  text_embeds: jax.Array        # projected and L2-normalised, [B_txt, projection_dim]
  image_embeds: jax.Array       # [B_img, projection_dim]
  text_model_output: CLIPTowerOutput
  vision_model_output: CLIPTowerOutput


def _linear(d_in: int, d_out: int, rngs: nnx.Rngs, dtype, names: tuple, use_bias: bool = True) -> nnx.Linear:
  # Low-precision inputs, float32 accumulation and output (see jaxris/models/bert.py).
  return nnx.Linear(d_in, d_out, use_bias=use_bias, dtype=dtype, preferred_element_type=jnp.float32,
                    kernel_init=nnx.initializers.normal(0.02), rngs=rngs, **dense(*names))


class _Attention(nnx.Module):
  """Multi-head scaled dot-product attention with separate q/k/v projections (CLIPAttention)."""

  def __init__(self, cfg, *, rngs: nnx.Rngs, dtype=None):
    d = cfg.hidden_size
    self.num_heads = cfg.num_attention_heads
    self.k_proj = _linear(d, d, rngs, dtype, ("embed", "qkv"))
    self.v_proj = _linear(d, d, rngs, dtype, ("embed", "qkv"))
    self.q_proj = _linear(d, d, rngs, dtype, ("embed", "qkv"))
    self.out_proj = _linear(d, d, rngs, dtype, ("heads", "embed"))

  def __call__(self, x, allowed=None):
    """x [B, T, D]; allowed: bool, broadcastable to [B, 1, T(query), T(key)], or None (all)."""
    b, t, d = x.shape
    split = lambda y: y.astype(x.dtype).reshape(b, t, self.num_heads, d // self.num_heads)
    q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    logits = logits * (d // self.num_heads) ** -0.5
    if allowed is not None:
      logits = jnp.where(allowed, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v, preferred_element_type=jnp.float32)
    return self.out_proj(out.reshape(b, t, d).astype(x.dtype)).astype(x.dtype)


class _MLP(nnx.Module):

  def __init__(self, cfg, *, rngs: nnx.Rngs, dtype=None):
    self.fc1 = _linear(cfg.hidden_size, cfg.intermediate_size, rngs, dtype, ("embed", "mlp"))
    self.fc2 = _linear(cfg.intermediate_size, cfg.hidden_size, rngs, dtype, ("mlp", "embed"))
    self.act = _ACTIVATIONS[cfg.hidden_act]

  def __call__(self, x):
    return self.fc2(self.act(self.fc1(x))).astype(x.dtype)


class _EncoderLayer(nnx.Module):
  """Pre-LN transformer block (CLIPEncoderLayer)."""

  def __init__(self, cfg, *, rngs: nnx.Rngs, dtype=None):
    self.self_attn = _Attention(cfg, rngs=rngs, dtype=dtype)
    self.layer_norm1 = layer_norm(cfg.hidden_size, cfg.layer_norm_eps, rngs, dtype)
    self.mlp = _MLP(cfg, rngs=rngs, dtype=dtype)
    self.layer_norm2 = layer_norm(cfg.hidden_size, cfg.layer_norm_eps, rngs, dtype)

  def __call__(self, x, allowed=None):
    x = shard_batch(x)
    x = x + self.self_attn(self.layer_norm1(x), allowed)
    return x + self.mlp(self.layer_norm2(x))


class _Encoder(nnx.Module):

  def __init__(self, cfg, *, rngs: nnx.Rngs, dtype=None):
    self.layers = nnx.List([_EncoderLayer(cfg, rngs=rngs, dtype=dtype) for _ in range(cfg.num_hidden_layers)])

  def __call__(self, x, allowed=None) -> list[jax.Array]:
    """Returns [x, block 1's output, ..., block N's output]."""
    states = [x]
    for layer in self.layers:
      states.append(layer(states[-1], allowed))
    return states


class _VisionEmbeddings(nnx.Module):
  """Patches (conv without bias) -> class token in front -> + learned positions."""

  def __init__(self, cfg: CLIPVisionConfig, *, rngs: nnx.Rngs, dtype=None):
    p, d = cfg.patch_size, cfg.hidden_size
    self.patch_size = p
    self.class_embedding = nnx.Param(jax.random.normal(rngs.params(), (d,)) * d**-0.5, **axes("embed"))
    self.patch_embedding = nnx.Conv(cfg.num_channels, d, (p, p), strides=(p, p), padding="VALID", use_bias=False,
                                    kernel_init=nnx.initializers.normal(0.02), dtype=dtype, rngs=rngs,
                                    **conv(None, "conv_out"))
    self.position_embedding = nnx.Embed(cfg.num_positions, d, dtype=dtype, rngs=rngs,
                                        embedding_init=nnx.initializers.normal(0.02), **embedding(None))

  def positions(self, grid: tuple[int, int]) -> jax.Array:
    """[1 + h*w, D]: the class position, then the patch positions, bicubically resized (torch's
    kernel, align_corners=False, as transformers' interpolate_pos_encoding) when the grid differs."""
    table = self.position_embedding.embedding[...]
    side = round((table.shape[0] - 1) ** 0.5)
    if tuple(grid) == (side, side):
      return table
    patches = resize_2d(table[1:].reshape(side, side, -1), grid, "bicubic", axes=(0, 1))
    return jnp.concatenate([table[:1], patches.reshape(grid[0] * grid[1], -1)])

  def __call__(self, pixel_values):
    b = pixel_values.shape[0]
    x = self.patch_embedding(pixel_values)  # [B, h, w, D]
    grid = x.shape[1:3]
    x = x.reshape(b, -1, x.shape[-1])
    cls = jnp.broadcast_to(self.class_embedding[...].astype(x.dtype), (b, 1, x.shape[-1]))
    x = jnp.concatenate([cls, x], axis=1)
    return x + self.positions(grid).astype(x.dtype)


class _TextEmbeddings(nnx.Module):

  def __init__(self, cfg: CLIPTextConfig, *, rngs: nnx.Rngs, dtype=None):
    embed = functools.partial(nnx.Embed, features=cfg.hidden_size, dtype=dtype,
                              embedding_init=nnx.initializers.normal(0.02), rngs=rngs)
    self.token_embedding = embed(cfg.vocab_size, **embedding("vocab"))
    self.position_embedding = embed(cfg.max_position_embeddings, **embedding(None))

  def __call__(self, input_ids):
    return self.token_embedding(input_ids) + self.position_embedding(jnp.arange(input_ids.shape[1])[None, :])


class CLIPVisionModel(nnx.Module):
  """transformers' ``CLIPVisionModel``: pixels [B, H, W, C] (NHWC, CLIP-normalised) -> tokens."""

  def __init__(self, config: CLIPVisionConfig, *, rngs: nnx.Rngs, dtype=None):
    self.config = config
    self.embeddings = _VisionEmbeddings(config, rngs=rngs, dtype=dtype)
    self.pre_layrnorm = layer_norm(config.hidden_size, config.layer_norm_eps, rngs, dtype)
    self.encoder = _Encoder(config, rngs=rngs, dtype=dtype)
    self.post_layernorm = layer_norm(config.hidden_size, config.layer_norm_eps, rngs, dtype)

  def __call__(self, pixel_values, interpolate_pos_encoding: bool = False) -> CLIPTowerOutput:
    """``interpolate_pos_encoding``: accept another (multiple of the patch size) image size and
    resize the position table to its grid, as transformers does; otherwise the size must match."""
    cfg = self.config
    size = tuple(pixel_values.shape[1:3])
    if pixel_values.ndim != 4 or pixel_values.shape[-1] != cfg.num_channels:
      raise ValueError(f"pixel_values must be [B, H, W, {cfg.num_channels}] (NHWC), got {pixel_values.shape}")
    if not interpolate_pos_encoding and size != (cfg.image_size, cfg.image_size):
      raise ValueError(f"image size {size[0]}x{size[1]} != the model's {cfg.image_size}x{cfg.image_size}; resize "
                       "the image (the bridge: torch bicubic to 336) or pass interpolate_pos_encoding=True")
    if size[0] % cfg.patch_size or size[1] % cfg.patch_size:
      raise ValueError(f"image size {size[0]}x{size[1]} is not a multiple of the patch size {cfg.patch_size}")
    states = self.encoder(self.pre_layrnorm(self.embeddings(pixel_values)))
    last = states[-1]
    return CLIPTowerOutput(last_hidden_state=last, hidden_states=tuple(states),
                           pooler_output=self.post_layernorm(last[:, 0]))


class CLIPTextModel(nnx.Module):
  """transformers' ``CLIPTextModel``: token ids [B, T] -> causal transformer -> final_layer_norm."""

  def __init__(self, config: CLIPTextConfig, *, rngs: nnx.Rngs, dtype=None):
    self.config = config
    self.embeddings = _TextEmbeddings(config, rngs=rngs, dtype=dtype)
    self.encoder = _Encoder(config, rngs=rngs, dtype=dtype)
    self.final_layer_norm = layer_norm(config.hidden_size, config.layer_norm_eps, rngs, dtype)

  def eot_positions(self, input_ids) -> jax.Array:
    """[B]: where each sequence is pooled (see the module docstring)."""
    if self.config.eos_token_id == LEGACY_EOS_TOKEN_ID:
      return jnp.argmax(input_ids, axis=-1)
    return jnp.argmax(input_ids == self.config.eos_token_id, axis=-1)

  def __call__(self, input_ids, attention_mask=None) -> CLIPTowerOutput:
    """input_ids [B, T] with T <= max_position_embeddings; attention_mask (1 = real token), optional."""
    if input_ids.ndim != 2:
      raise ValueError(f"input_ids must be [batch, length], got shape {input_ids.shape}")
    t = input_ids.shape[1]
    if t > self.config.max_position_embeddings:
      raise ValueError(f"sequence length {t} exceeds max_position_embeddings "
                       f"{self.config.max_position_embeddings}; truncate the text (the tokenizer does)")
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
      raise ValueError(f"attention_mask shape {attention_mask.shape} != input_ids shape {input_ids.shape}")
    allowed = jnp.tril(jnp.ones((t, t), bool))[None, None]
    if attention_mask is not None:
      allowed = allowed & attention_mask.astype(bool)[:, None, None, :]
    states = self.encoder(self.embeddings(input_ids), allowed)
    last = self.final_layer_norm(states[-1])
    pooled = last[jnp.arange(last.shape[0]), self.eot_positions(input_ids)]
    return CLIPTowerOutput(last_hidden_state=last, hidden_states=tuple(states), pooler_output=pooled)


class CLIPModel(nnx.Module):
  """transformers' ``CLIPModel``: both towers, their projections and the logit scale."""

  def __init__(self, config: CLIPConfig, *, rngs: nnx.Rngs, dtype=None):
    self.config = config
    self.text_model = CLIPTextModel(config.text, rngs=rngs, dtype=dtype)
    self.vision_model = CLIPVisionModel(config.vision, rngs=rngs, dtype=dtype)
    self.visual_projection = _linear(config.vision.hidden_size, config.projection_dim, rngs, dtype,
                                     ("embed", None), use_bias=False)
    self.text_projection = _linear(config.text.hidden_size, config.projection_dim, rngs, dtype,
                                   ("embed", None), use_bias=False)
    self.logit_scale = nnx.Param(jnp.asarray(config.logit_scale_init_value, jnp.float32))

  def get_image_features(self, pixel_values, interpolate_pos_encoding: bool = False) -> jax.Array:
    """[B, projection_dim]: visual_projection of the pooled class token (not normalised)."""
    return self.visual_projection(self.vision_model(pixel_values, interpolate_pos_encoding).pooler_output)

  def get_text_features(self, input_ids, attention_mask=None) -> jax.Array:
    """[B, projection_dim]: text_projection of the end-of-text token (not normalised)."""
    return self.text_projection(self.text_model(input_ids, attention_mask).pooler_output)

  def __call__(self, input_ids, pixel_values, attention_mask=None,
               interpolate_pos_encoding: bool = False) -> CLIPOutput:
    vision = self.vision_model(pixel_values, interpolate_pos_encoding)
    text = self.text_model(input_ids, attention_mask)
    normalise = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)
    image_embeds = normalise(self.visual_projection(vision.pooler_output))
    text_embeds = normalise(self.text_projection(text.pooler_output))
    logits_per_text = text_embeds @ image_embeds.T * jnp.exp(self.logit_scale[...])
    return CLIPOutput(logits_per_image=logits_per_text.T, logits_per_text=logits_per_text, text_embeds=text_embeds,
                      image_embeds=image_embeds, text_model_output=text, vision_model_output=vision)


def _abstract_tower(cls, config, dtype=None):
  tower = nnx.eval_shape(lambda: cls(dataclasses.replace(config, num_hidden_layers=0), rngs=nnx.Rngs(0), dtype=dtype))
  layer = nnx.eval_shape(lambda: _EncoderLayer(config, rngs=nnx.Rngs(0), dtype=dtype))
  tower.encoder.layers = nnx.List([nnx.clone(layer) for _ in range(config.num_hidden_layers)])
  tower.config = config
  return tower


def abstract_model(config: CLIPConfig, dtype=None) -> CLIPModel:
  """``nnx.eval_shape(lambda: CLIPModel(config, ...))`` in about a second, whatever the depth.

  One eval_shape trace of a deep model is quadratic in flax 0.12 (see
  jaxris.models.beit3.abstract_model): each tower is traced without blocks, one block is traced
  and copied. Converters use this for parameter shapes and to build a model without a random init.
  """
  shallow = dataclasses.replace(config, vision=dataclasses.replace(config.vision, num_hidden_layers=0),
                                text=dataclasses.replace(config.text, num_hidden_layers=0))
  model = nnx.eval_shape(lambda: CLIPModel(shallow, rngs=nnx.Rngs(0), dtype=dtype))
  model.vision_model = _abstract_tower(CLIPVisionModel, config.vision, dtype)
  model.text_model = _abstract_tower(CLIPTextModel, config.text, dtype)
  model.config = config
  return model


def abstract_vision_model(config: CLIPVisionConfig, dtype=None) -> CLIPVisionModel:
  """The vision tower alone, abstract (see ``abstract_model``): what the bridge runs."""
  return _abstract_tower(CLIPVisionModel, config, dtype)
