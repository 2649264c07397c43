"""DIT-SAM's text-injecting image encoders (wysnzzzz/DIT, segment_anything/modeling/image_encoder_*.py).

The ViT is SAM's, run the DIT way: global attention in every block, 20 text slots prepended to
the image tokens (the relative-position term only touches the image-image block), slots dropped
before the neck. What the slots hold before block i is the scheme (``text`` = BERT tokens,
``slots`` = the slot outputs of block i-1, ``image`` = the image tokens entering block i):

  scheme        official name        slots before block i
  default       default_sam          none (text only reaches SAM as sparse prompts)
  ldit          layer_wise           Dropout(probs[i](text))
  edit          e2e                  i=0: Dropout(probs[0](text)); then Dropout(probs[i](slots))
  token_ldit    token_layer_wise     text + tokens[i]
  token_edit    e2e_token            i=0: Dropout(probs(text)); then slots + tokens[i-1]
  crossatt      cross_attention      i=0: probs[0](text);
                                     then ln[i-1](probs[i](text) + Dropout(cross[i-1](q=text, kv=slots)))
  crossatt_ffn  cross_attention_ffn  ln[i](text + Dropout(cross[i](q=text, kv=image)))

and the parameters each adds (D blocks of width C), initialised as the official code does:

  ldit, edit     probs.{0..D-1} Linear(C, C), zero
  token_ldit     tokens [D, 20, C], N(0, 1)
  token_edit     probs Linear(C, C), torch's default init; tokens [D-1, 20, C], torch's xavier_uniform
  crossatt       probs.{0..D-1} weight all ones, bias zero; cross.{0..D-2} MHAtt; ln.{0..D-2}
  crossatt_ffn   cross.{0..D-1} MHA_FFN; ln.{0..D-1}

``cross`` are the official MHAtt / MHA_FFN modules and ``ln`` its own LayerNorm (dit_crossatt.py).
The official encoders add or attend with the raw 768-wide BERT tokens, so they only exist for a
ViT as wide as the text encoder (ViT-B). When the widths differ (ViT-H, or a reduced ViT with
MiniLM) every scheme first maps the text once with a ``prob_text`` Linear, as the official ViT-H
L-DIT does, and uses the result as ``text`` above. Every dropout on the text path (the slot
dropouts above and those inside the cross-attention modules, all 0.1 officially) takes the
``slot_dropout`` rate.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from flax import nnx

from jaxris.models.layers import axes, dense
from jaxris.models.ris import dit_crossatt as ca
from jaxris.models.sam.image_encoder import ImageEncoderConfig, ImageEncoderViT

NUM_SLOTS = 20  # the official `tokens` parameters hard-code the 20 BERT positions


# --- Parameters each scheme adds to the encoder (names as the official state_dict).

def _zero_probs(enc, depth, width, rngs, dtype):
  zeros = nnx.initializers.zeros_init()
  enc.probs = nnx.List([nnx.Linear(width, width, kernel_init=zeros, bias_init=zeros, dtype=dtype, rngs=rngs,
                                   **dense("embed", "mlp"))
                        for _ in range(depth)])


def _token_ldit_params(enc, depth, width, rngs, dtype):
  enc.tokens = nnx.Param(nnx.initializers.normal(1.0)(rngs.params(), (depth, NUM_SLOTS, width)), **axes(None, None, "embed"))


def _token_edit_params(enc, depth, width, rngs, dtype):
  enc.probs = ca.torch_linear(width, width, ("embed", "mlp"), rngs=rngs, dtype=dtype)
  # torch's xavier_uniform_ on a 3-D tensor: fan_in = 20 * C, fan_out = (D-1) * C.
  init = nnx.initializers.variance_scaling(1.0, "fan_avg", "uniform", in_axis=1, out_axis=0)
  enc.tokens = nnx.Param(init(rngs.params(), (depth - 1, NUM_SLOTS, width)), **axes(None, None, "embed"))


def _crossatt_params(enc, depth, width, rngs, dtype):
  ones, zeros = nnx.initializers.ones_init(), nnx.initializers.zeros_init()
  enc.probs = nnx.List([nnx.Linear(width, width, kernel_init=ones, bias_init=zeros, dtype=dtype, rngs=rngs,
                                   **dense("embed", "mlp"))
                        for _ in range(depth)])
  enc.cross = nnx.List([ca.MHAtt(width, enc.slot_dropout.rate, rngs=rngs, dtype=dtype) for _ in range(depth - 1)])
  enc.ln = nnx.List([ca.LayerNorm(width) for _ in range(depth - 1)])


def _crossatt_ffn_params(enc, depth, width, rngs, dtype):
  enc.cross = nnx.List([ca.MHAFFN(width, enc.slot_dropout.rate, rngs=rngs, dtype=dtype) for _ in range(depth)])
  enc.ln = nnx.List([ca.LayerNorm(width) for _ in range(depth)])


# --- What each scheme writes into the slots before block i; `kw` switches the dropout on or off.

def _ldit(enc, i, text, slots, image, kw):
  return enc.slot_dropout(enc.probs[i](text), **kw)


def _edit(enc, i, text, slots, image, kw):
  return enc.slot_dropout(enc.probs[i](text if i == 0 else slots), **kw)


def _token_ldit(enc, i, text, slots, image, kw):
  return text + enc.tokens[...][i]


def _token_edit(enc, i, text, slots, image, kw):
  if i == 0:
    return enc.slot_dropout(enc.probs(text), **kw)
  return slots + enc.tokens[...][i - 1]


def _crossatt(enc, i, text, slots, image, kw):
  if i == 0:
    return enc.probs[0](text)
  attended = enc.cross[i - 1](slots, slots, text, **kw)
  return enc.ln[i - 1](enc.probs[i](text) + enc.slot_dropout(attended, **kw))


def _crossatt_ffn(enc, i, text, slots, image, kw):
  attended = enc.cross[i](image, image, text, **kw)
  return enc.ln[i](text + enc.slot_dropout(attended, **kw))


SCHEMES = {  # name -> (add parameters, write the slots); "default" has no text slots
    "default": (None, None),
    "ldit": (_zero_probs, _ldit),
    "edit": (_zero_probs, _edit),
    "token_ldit": (_token_ldit_params, _token_ldit),
    "token_edit": (_token_edit_params, _token_edit),
    "crossatt": (_crossatt_params, _crossatt),
    "crossatt_ffn": (_crossatt_ffn_params, _crossatt_ffn),
}


class TextInjectedEncoder(ImageEncoderViT):
  """SAM's ViT with DIT text slots; parameter paths as the official ``visual_encoder``."""

  def __init__(self, cfg: ImageEncoderConfig, scheme: str, text_dim: int, slot_dropout: float = 0.1,
               remat: bool = False, *, rngs: nnx.Rngs, dtype=None):
    if scheme not in SCHEMES:
      raise ValueError(f"unknown DIT scheme {scheme!r}; choose from {tuple(SCHEMES)}")
    super().__init__(dataclasses.replace(cfg, window_partition=False), rngs=rngs, dtype=dtype)
    self.scheme = scheme
    self.remat = remat
    add_params, _ = SCHEMES[scheme]
    if add_params is None:
      return
    width = cfg.embed_dim
    if text_dim != width:
      self.prob_text = nnx.Linear(text_dim, width, dtype=dtype, rngs=rngs, **dense("embed", "mlp"))
    self.slot_dropout = nnx.Dropout(slot_dropout)
    add_params(self, cfg.depth, width, rngs, dtype)

  def __call__(self, images: jnp.ndarray, text: jnp.ndarray | None = None, *, rngs: nnx.Rngs | None = None):
    """images [B, H, W, 3] normalised; text [B, T, text_dim] BERT tokens -> [B, H/16, W/16, 256].

    ``rngs`` (with a 'dropout' stream) switches the text-path dropout on, for training.
    """
    _, write = SCHEMES[self.scheme]
    if write is not None and text is None:
      raise ValueError(f"the {self.scheme} encoder needs text tokens")
    if hasattr(self, "tokens") and text.shape[1] != NUM_SLOTS:
      raise ValueError(f"the {self.scheme} encoder's learnt tokens need {NUM_SLOTS} text tokens, got {text.shape[1]}")
    x = self.embed(images)
    run = _run_block_remat if self.remat else _run_block
    if write is None:
      for block in self.blocks:
        x, _ = run(block, x, None)
      return self.apply_neck(x)
    text = self.prob_text(text) if hasattr(self, "prob_text") else text
    kw = dict(deterministic=rngs is None, rngs=rngs)
    slots = None
    for i, block in enumerate(self.blocks):
      image = x.reshape(x.shape[0], -1, x.shape[-1])
      slots = write(self, i, text, slots, image, kw).astype(x.dtype)
      x, slots = run(block, x, slots)
    return self.apply_neck(x)


def _run_block(block, x, prefix):
  out = block(x, prefix=prefix)
  return out if prefix is not None else (out, None)


# Recomputes a block's activations in the backward pass instead of storing them.
_run_block_remat = nnx.remat(_run_block)
