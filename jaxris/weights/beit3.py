"""BEiT-3 checkpoints (torchscale ``BEiT3`` state_dicts) -> jaxris BEiT3.

The module paths of jaxris.models.beit3 mirror torchscale's, so the mapping is the table
below: LayerNorm ``weight`` -> ``scale``, Embedding ``weight`` -> ``embedding``, Linear and
Conv weights transposed to Flax's layouts, the [CLS] and mask tokens kept as they are.

The official unilm checkpoints (``beit3_{base,large}_patch16_224.pth``) hold the state_dict
under ``"model"`` with every encoder key prefixed ``beit3.`` (BEiT3Wrapper.beit3); fine-tuned
ones add task heads (``head``, ``fc_norm``, ``pooler``, ...), which are ignored explicitly
(``UNILM_HEADS``). EVF-SAM checkpoints hold the same encoder under ``mm_extractor.beit3.``:
their converter reuses ``rules`` with that prefix, or calls ``convert_state_dict(sd,
prefix="mm_extractor.beit3.", ignore=...)`` naming everything else it handles itself.

The variant is read from the shapes: width and vocabulary from ``text_embed``, depth from the
layer indices, FFN width from ``fc1``, patch size and channels from the patch projection,
image size from the vision position table, text length from the text position table. The
head count is not in any shape: it is width / 64, true of both official sizes (base 768/12,
large 1024/16); pass ``num_heads`` for anything else.
"""

from __future__ import annotations

import math
import re
from typing import Mapping, Sequence

import numpy as np

from jaxris.models.beit3 import POSITION_OFFSET, BEiT3, BEiT3Config, abstract_model
from jaxris.weights import reader, store
from jaxris.weights.mapping import ConversionError, Rule, conv_kernel, convert, identity, linear_kernel

FAMILY = "beit3"
PREFIX = "beit3."  # unilm's BEiT3Wrapper keeps the encoder at .beit3

# Task heads of unilm's fine-tuning models (beit3/modeling_finetune.py) and BEiT3Wrapper
# extras: not part of the encoder. Regexes over the full key, prefix-free (the heads sit
# next to `beit3.`, not under it).
UNILM_HEADS = (
    r"head\..*",            # classification / VQA / NLVR2 heads
    r"fc_norm\..*",         # image classification
    r"pooler\..*",          # VQA
    r"language_head\..*",   # retrieval
    r"vision_head\..*",     # retrieval
    r"logit_scale",         # retrieval
    r"mlm_head\..*",        # captioning
)

_HEAD_DIM = 64  # both official sizes


def rules(source_prefix: str = PREFIX, target_prefix: str = "") -> list[Rule]:
  """The rename/transpose table, for keys under `source_prefix` -> params under `target_prefix`."""
  s, t = re.escape(source_prefix), target_prefix
  layer = rf"{s}encoder\.layers\.(\d+)\."
  tlayer = rf"{t}encoder.layers.\1."
  ln = r"self_attn\.inner_attn_ln|self_attn_layer_norm|final_layer_norm"
  return [
      Rule(rf"{s}text_embed\.weight", f"{t}text_embed.embedding"),
      Rule(rf"{s}vision_embed\.proj\.weight", f"{t}vision_embed.proj.kernel", conv_kernel),
      Rule(rf"{s}vision_embed\.proj\.bias", f"{t}vision_embed.proj.bias"),
      Rule(rf"{s}vision_embed\.(cls_token|mask_token)", rf"{t}vision_embed.\1", identity),
      Rule(rf"{s}encoder\.embed_positions\.([AB])\.weight", rf"{t}encoder.embed_positions.\1.embedding"),
      Rule(rf"{layer}self_attn\.([qkv]_proj|out_proj)\.([AB])\.weight", rf"{tlayer}self_attn.\2.\3.kernel",
           linear_kernel),
      Rule(rf"{layer}self_attn\.([qkv]_proj|out_proj)\.([AB])\.bias", rf"{tlayer}self_attn.\2.\3.bias"),
      Rule(rf"{layer}({ln})\.([AB])\.weight", rf"{tlayer}\2.\3.scale"),
      Rule(rf"{layer}({ln})\.([AB])\.bias", rf"{tlayer}\2.\3.bias"),
      Rule(rf"{layer}ffn\.([AB])\.(fc[12])\.weight", rf"{tlayer}ffn.\2.\3.kernel", linear_kernel),
      Rule(rf"{layer}ffn\.([AB])\.(fc[12])\.bias", rf"{tlayer}ffn.\2.\3.bias"),
      Rule(rf"{layer}ffn\.([AB])\.ffn_layernorm\.weight", rf"{tlayer}ffn.\2.ffn_layernorm.scale"),
      Rule(rf"{layer}ffn\.([AB])\.ffn_layernorm\.bias", rf"{tlayer}ffn.\2.ffn_layernorm.bias"),
      Rule(rf"{s}encoder\.layer_norm\.([AB])\.weight", rf"{t}encoder.layer_norm.\1.scale"),
      Rule(rf"{s}encoder\.layer_norm\.([AB])\.bias", rf"{t}encoder.layer_norm.\1.bias"),
  ]


def _shape(state_dict: Mapping[str, np.ndarray], key: str) -> tuple[int, ...]:
  if key not in state_dict:
    some = sorted(state_dict)[:5]
    raise ConversionError(f"not a BEiT-3 state_dict with this prefix: no '{key}' (first keys: {some})")
  return tuple(np.shape(state_dict[key]))


def infer_config(state_dict: Mapping[str, np.ndarray], prefix: str = PREFIX,
                 num_heads: int | None = None) -> BEiT3Config:
  """The encoder's sizes, read from the tensor shapes of the keys under `prefix`."""
  state_dict = reader.lazy(state_dict).stand_ins()  # shapes only: no tensor read
  vocab, width = _shape(state_dict, f"{prefix}text_embed.weight")
  _, chans, patch, _ = _shape(state_dict, f"{prefix}vision_embed.proj.weight")
  vision_rows = _shape(state_dict, f"{prefix}encoder.embed_positions.A.weight")[0]
  text_rows = _shape(state_dict, f"{prefix}encoder.embed_positions.B.weight")[0]
  layer_re = re.compile(re.escape(prefix) + r"encoder\.layers\.(\d+)\.")
  layers = sorted({int(m.group(1)) for k in state_dict if (m := layer_re.match(k))})
  if not layers:
    raise ConversionError(f"no '{prefix}encoder.layers.N.*' keys: not a BEiT-3 state_dict with this prefix")
  # Missing layers in between are reported by the strict conversion, by name.
  ffn = _shape(state_dict, f"{prefix}encoder.layers.{layers[0]}.ffn.A.fc1.weight")[0]
  grid = math.isqrt(vision_rows - 1 - POSITION_OFFSET)
  if grid * grid != vision_rows - 1 - POSITION_OFFSET:
    raise ConversionError(f"{prefix}encoder.embed_positions.A.weight has {vision_rows} rows, which is not "
                          f"a square number of patches + 1 [CLS] + {POSITION_OFFSET}")
  if num_heads is None:
    if width % _HEAD_DIM:
      raise ConversionError(f"cannot infer the head count of a {width}-wide BEiT-3; pass num_heads")
    num_heads = width // _HEAD_DIM
  return BEiT3Config(encoder_embed_dim=width, encoder_attention_heads=num_heads, encoder_ffn_embed_dim=ffn,
                     encoder_layers=max(layers) + 1, vocab_size=vocab, img_size=grid * patch,
                     patch_size=patch, in_chans=chans, max_source_positions=text_rows)


def convert_state_dict(state_dict: Mapping[str, np.ndarray], prefix: str = PREFIX,
                       ignore: Sequence[str] = UNILM_HEADS, cfg: BEiT3Config | None = None,
                       num_heads: int | None = None) -> tuple[BEiT3Config, reader.StateDict]:
  """A state_dict holding a torchscale BEiT3 under `prefix` -> (config, jaxris params); strict.

  Every key must be a BEiT-3 tensor under `prefix` or match one of the `ignore` regexes
  (full match); every parameter must be filled with the right shape. All problems are
  listed in one ConversionError. The params are lazy (see jaxris.weights.mapping.convert).
  """
  state_dict = reader.lazy(state_dict)
  cfg = cfg or infer_config(state_dict, prefix, num_heads)
  shapes = store.param_shapes(abstract_model(cfg))
  params = convert(state_dict, rules(prefix), shapes, ignore=ignore, what=f"BEiT-3 checkpoint ({prefix!r} keys)")
  return cfg, params


def read_checkpoint(path: str) -> reader.StateDict:
  """A unilm .pth (the state_dict under "model", args Namespace allowed) or a bare state_dict,
  read lazily and safely (jaxris.weights.reader)."""
  return reader.read(path)


def build(cfg: BEiT3Config, params: Mapping[str, np.ndarray], dtype=None) -> BEiT3:
  """A BEiT3 holding `params`, without spending time on a random init first."""
  model = abstract_model(cfg, dtype)
  store.assign_params(model, dict(params))
  return model


def from_torch(state_dict, prefix: str = "", ignore: Sequence[str] = (), dtype=None) -> BEiT3:
  """A jaxris BEiT3 from a torchscale state_dict (torch tensors or numpy; default: a bare BEiT3's)."""
  cfg, params = convert_state_dict(reader.from_checkpoint(state_dict), prefix=prefix, ignore=ignore)
  return build(cfg, params, dtype)


def save(directory: str, cfg: BEiT3Config, params: Mapping[str, np.ndarray], progress: bool = False) -> None:
  store.save(directory, FAMILY, cfg.to_dict(), params, progress)


def load(directory: str, dtype=None) -> BEiT3:
  """A converted weights directory (python convert/beit3.py ...) -> BEiT3. No PyTorch needed."""
  cfg, params = store.load(directory, FAMILY)
  return build(BEiT3Config.from_dict(cfg), params, dtype)
