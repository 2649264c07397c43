"""BERT encoder in Flax NNX, a faithful port of transformers' ``BertModel`` (encoder only).

Attribute names mirror the PyTorch state_dict (``embeddings.word_embeddings``,
``encoder.layer.N.attention.self.query``, ``pooler.dense`` ...), so the converter in
``jaxris/weights/bert.py`` is a table of renames and transposes. Every size comes from
``BertConfig``, which reads a Hugging Face ``config.json``.

  cfg = BertConfig.from_hf_config("path/to/hf_dir")
  model = BertModel(cfg, rngs=nnx.Rngs(0))
  out = model(input_ids, attention_mask)   # out.last_hidden_state, out.hidden_states, out.pooler_output

Parameters are always float32; ``dtype`` (e.g. jnp.bfloat16) is the compute dtype of the
matmul inputs and of the hidden states. Matmuls accumulate in float32, and softmax and
LayerNorm statistics are float32, whatever ``dtype`` is.

Dropout runs only in training mode, i.e. when the call gets ``rngs`` with a 'dropout' stream
(transformers' model.train()); a call without rngs is eval mode. The model itself holds no RNG state, so its
state is exactly its parameters.
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

from jaxris.models.layers import dense, embedding, layer_norm, shard_batch
from jaxris.ops.activations import gelu
from jaxris.ops.attention import attention


def _tanh_gelu(x):
  return 0.5 * x * (1.0 + jnp.tanh(0.7978845608028654 * (x + 0.044715 * x**3)))


# transformers' ACT2FN names -> functions. "gelu" is the exact erf form (jax.nn.gelu's default
# is the tanh approximation, which would be a silent 1e-3 error).
_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": gelu,
    "gelu_python": gelu,
    "gelu_new": _tanh_gelu,
    "gelu_pytorch_tanh": _tanh_gelu,
    "gelu_python_tanh": _tanh_gelu,
    "gelu_accurate": _tanh_gelu,
    "gelu_fast": lambda x: 0.5 * x * (1.0 + jnp.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x))),
    "gelu_10": lambda x: jnp.clip(gelu(x), -10, 10),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "relu": jax.nn.relu,
    "relu6": jax.nn.relu6,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "mish": lambda x: x * jnp.tanh(jax.nn.softplus(x)),
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "linear": lambda x: x,
}


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """The sizes of a BERT encoder; defaults are those of transformers' BertConfig (BERT-base)."""

  vocab_size: int = 30522
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  hidden_act: str = "gelu"
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  hidden_dropout_prob: float = 0.1          # used only in training mode
  attention_probs_dropout_prob: float = 0.1  # used only in training mode
  add_pooling_layer: bool = True             # BertModel(config, add_pooling_layer=...)

  def __post_init__(self):
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of "
                       f"num_attention_heads {self.num_attention_heads}")
    if self.hidden_act not in _ACTIVATIONS:
      raise ValueError(f"hidden_act '{self.hidden_act}' is not supported; known: {sorted(_ACTIVATIONS)}")

  @classmethod
  def from_hf_config(cls, config: dict[str, Any] | str | os.PathLike, **overrides) -> "BertConfig":
    """Reads a Hugging Face BERT config: a dict, a ``config.json`` path, or its directory.

    Keys this encoder does not use (architectures, torch_dtype, ...) are ignored; options that
    would change the computation in a way we do not implement are refused, not ignored.
    """
    if not isinstance(config, dict):
      path = os.fspath(config)
      if os.path.isdir(path):
        path = os.path.join(path, "config.json")
      if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: expected a Hugging Face BERT config.json")
      with open(path) as f:
        config = json.load(f)
    if config.get("position_embedding_type", "absolute") != "absolute":
      raise ValueError(f"position_embedding_type '{config['position_embedding_type']}' is not supported "
                       "(only 'absolute', the BERT default)")
    if config.get("is_decoder") or config.get("add_cross_attention"):
      raise ValueError("decoder BERT (is_decoder / add_cross_attention) is not supported: this is an encoder")
    if not isinstance(config.get("hidden_act", "gelu"), str):
      raise ValueError(f"hidden_act must be a name, got {config['hidden_act']!r}")
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in config.items() if k in fields}
    kwargs.update(overrides)
    return cls(**kwargs)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class BertModelOutput:
  """What ``BertModel`` returns (a pytree, so it can leave jax.jit)."""

  last_hidden_state: jax.Array          # [B, T, hidden]
  hidden_states: tuple[jax.Array, ...]  # embeddings output, then every layer's output: num_layers + 1
  pooler_output: jax.Array | None       # [B, hidden] = tanh(dense(last_hidden_state[:, 0])), None without pooler


def _dropout(dropout: nnx.Dropout, x, rngs):
  """Training mode is a call with rngs (a 'dropout' stream), as transformers' model.train(); without
  rngs the layer is the identity (eval mode)."""
  return dropout(x, deterministic=rngs is None, rngs=rngs)


def _layer_norm(cfg: BertConfig, rngs: nnx.Rngs, dtype) -> nnx.LayerNorm:
  return layer_norm(cfg.hidden_size, cfg.layer_norm_eps, rngs, dtype)


class _Embeddings(nnx.Module):
  """word + token type + absolute position embeddings -> LayerNorm -> dropout."""

  def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs, dtype=None):
    embed = functools.partial(nnx.Embed, features=cfg.hidden_size, dtype=dtype,
                              embedding_init=nnx.initializers.normal(0.02), rngs=rngs)
    self.word_embeddings = embed(cfg.vocab_size, **embedding("vocab"))
    self.position_embeddings = embed(cfg.max_position_embeddings, **embedding(None))
    self.token_type_embeddings = embed(cfg.type_vocab_size, **embedding(None))
    self.LayerNorm = _layer_norm(cfg, rngs, dtype)
    self.dropout = nnx.Dropout(cfg.hidden_dropout_prob)

  def __call__(self, input_ids, token_type_ids, rngs=None):
    positions = jnp.arange(input_ids.shape[1])[None, :]
    x = (self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids) +
         self.position_embeddings(positions))
    return _dropout(self.dropout, self.LayerNorm(x), rngs)


def _linear(d_in: int, d_out: int, rngs: nnx.Rngs, dtype, names: tuple[str, str]) -> nnx.Linear:
  # Low-precision inputs, float32 accumulation and output: more accurate, and on CPU a bf16 dot
  # with a bf16 result is much slower than one with a float32 result.
  return nnx.Linear(d_in, d_out, dtype=dtype, preferred_element_type=jnp.float32,
                    kernel_init=nnx.initializers.normal(0.02), rngs=rngs, **dense(*names))


class _SelfAttention(nnx.Module):
  """Multi-head scaled dot-product attention over the non-padding keys."""

  def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs, dtype=None):
    self.num_heads = cfg.num_attention_heads
    self.query = _linear(cfg.hidden_size, cfg.hidden_size, rngs, dtype, ("embed", "qkv"))
    self.key = _linear(cfg.hidden_size, cfg.hidden_size, rngs, dtype, ("embed", "qkv"))
    self.value = _linear(cfg.hidden_size, cfg.hidden_size, rngs, dtype, ("embed", "qkv"))
    self.dropout = nnx.Dropout(cfg.attention_probs_dropout_prob)

  def __call__(self, x, key_mask, rngs=None):
    b, t, d = x.shape
    split = lambda y: y.reshape(b, t, self.num_heads, d // self.num_heads)
    q, k, v = (split(linear(x).astype(x.dtype)) for linear in (self.query, self.key, self.value))
    # Padding keys are left out as transformers' most-negative-float mask does (a row with no valid
    # key attends uniformly); the weights' dropout is on only in training (a call with rngs).
    dropout = None if rngs is None or not self.dropout.rate else (lambda w: _dropout(self.dropout, w, rngs))
    out = attention(q, k, v, scale=(d // self.num_heads) ** -0.5, key_mask=key_mask, dropout=dropout)
    return out.reshape(b, t, d).astype(x.dtype)


class _Output(nnx.Module):
  """dense -> dropout -> LayerNorm(. + residual): transformers' BertSelfOutput and BertOutput."""

  def __init__(self, cfg: BertConfig, d_in: int, inner: str, *, rngs: nnx.Rngs, dtype=None):
    self.dense = _linear(d_in, cfg.hidden_size, rngs, dtype, (inner, "embed"))
    self.LayerNorm = _layer_norm(cfg, rngs, dtype)
    self.dropout = nnx.Dropout(cfg.hidden_dropout_prob)

  def __call__(self, x, residual, rngs=None):
    return self.LayerNorm(_dropout(self.dropout, self.dense(x), rngs) + residual)


class _Attention(nnx.Module):

  def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs, dtype=None):
    self.self = _SelfAttention(cfg, rngs=rngs, dtype=dtype)
    self.output = _Output(cfg, cfg.hidden_size, "heads", rngs=rngs, dtype=dtype)

  def __call__(self, x, key_mask, rngs=None):
    return self.output(self.self(x, key_mask, rngs), x, rngs)


class _Intermediate(nnx.Module):

  def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs, dtype=None):
    self.dense = _linear(cfg.hidden_size, cfg.intermediate_size, rngs, dtype, ("embed", "mlp"))
    self.act = _ACTIVATIONS[cfg.hidden_act]

  def __call__(self, x):
    return self.act(self.dense(x))


class _Layer(nnx.Module):
  """Post-LN transformer layer: attention block, then the feed-forward block."""

  def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs, dtype=None):
    self.attention = _Attention(cfg, rngs=rngs, dtype=dtype)
    self.intermediate = _Intermediate(cfg, rngs=rngs, dtype=dtype)
    self.output = _Output(cfg, cfg.intermediate_size, "mlp", rngs=rngs, dtype=dtype)

  def __call__(self, x, key_mask, rngs=None):
    x = self.attention(shard_batch(x), key_mask, rngs)
    return self.output(self.intermediate(x), x, rngs)


class _Encoder(nnx.Module):

  def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs, dtype=None):
    self.layer = nnx.List([_Layer(cfg, rngs=rngs, dtype=dtype) for _ in range(cfg.num_hidden_layers)])


class _Pooler(nnx.Module):

  def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs, dtype=None):
    self.dense = _linear(cfg.hidden_size, cfg.hidden_size, rngs, dtype, ("embed", "mlp"))

  def __call__(self, x):
    return jnp.tanh(self.dense(x[:, 0])).astype(x.dtype)


class BertModel(nnx.Module):
  """transformers' ``BertModel`` (encoder, absolute positions, optional pooler) in Flax NNX."""

  def __init__(self, config: BertConfig, *, rngs: nnx.Rngs, dtype=None):
    self.config = config
    self.embeddings = _Embeddings(config, rngs=rngs, dtype=dtype)
    self.encoder = _Encoder(config, rngs=rngs, dtype=dtype)
    self.pooler = _Pooler(config, rngs=rngs, dtype=dtype) if config.add_pooling_layer else None

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *,
               rngs: nnx.Rngs | None = None) -> BertModelOutput:
    """input_ids, attention_mask (1 = real token, 0 = padding), token_type_ids: int [B, T].

    ``attention_mask`` defaults to all ones and ``token_type_ids`` to all zeros, as in
    transformers. ``rngs`` (with a 'dropout' stream) is needed only in training mode.
    """
    if input_ids.ndim != 2:
      raise ValueError(f"input_ids must be [batch, length], got shape {input_ids.shape}")
    if input_ids.shape[1] > self.config.max_position_embeddings:
      raise ValueError(f"sequence length {input_ids.shape[1]} exceeds max_position_embeddings "
                       f"{self.config.max_position_embeddings}; truncate the text (the tokenizer does)")
    for name, x in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
      if x is not None and x.shape != input_ids.shape:
        raise ValueError(f"{name} shape {x.shape} != input_ids shape {input_ids.shape}")
    key_mask = jnp.ones(input_ids.shape, bool) if attention_mask is None else attention_mask.astype(bool)
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)

    x = self.embeddings(input_ids, token_type_ids, rngs)
    hidden_states = [x]
    for layer in self.encoder.layer:
      x = layer(x, key_mask, rngs)
      hidden_states.append(x)
    pooled = self.pooler(x) if self.pooler is not None else None
    return BertModelOutput(last_hidden_state=x, hidden_states=tuple(hidden_states), pooler_output=pooled)
