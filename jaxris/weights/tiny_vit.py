"""MobileSAM's TinyViT image encoder (official mobile_sam.pt) -> jaxris.models.sam.tiny_vit.

The module paths mirror the official state_dict, so the rules are renames: batch norm
``weight/running_mean/running_var`` -> ``scale/mean/var``, the attention/MLP LayerNorm ``weight``
-> ``scale``, convolution weights to Flax's layout, the attention-bias tables as they are. Linear
layers, biases and the neck fall through to SAM's own rules (jaxris.weights.sam.RULES, which puts
these first). The official classifier (``norm_head``, ``head``: built by TinyViT but unused by
MobileSAM's forward) and batch norm's ``num_batches_tracked`` counters are ignored by name.
"""

from __future__ import annotations

import re

import numpy as np

from jaxris.models.sam.sam import VARIANTS, SamConfig, sam_config
from jaxris.weights.mapping import Rule, conv_kernel

_ENC = r"image_encoder\."

RULES = [
    Rule(rf"({_ENC}.*\.bn)\.weight", r"\1.scale"),
    Rule(rf"({_ENC}.*\.bn)\.running_mean", r"\1.mean"),
    Rule(rf"({_ENC}.*\.bn)\.running_var", r"\1.var"),
    Rule(rf"({_ENC}.*\.c)\.weight", r"\1.kernel", conv_kernel),
    Rule(rf"({_ENC}layers\.\d+\.blocks\.\d+\.(?:attn|mlp)\.norm)\.weight", r"\1.scale"),
    Rule(rf"({_ENC}layers\.\d+\.blocks\.\d+\.attn\.attention_biases)", r"\1"),
]

IGNORE = [
    rf"{_ENC}(?:norm_head|head)\.(?:weight|bias)",
    rf"{_ENC}.*\.bn\.num_batches_tracked",
]

STEM_KEY = "image_encoder.patch_embed.seq.0.c.weight"


def is_tiny_vit(state_dict) -> bool:
  return STEM_KEY in state_dict


def infer_config(state_dict) -> SamConfig:
  """MobileSAM's SamConfig with every encoder size read from the tensor shapes.

  The input size is not in the weights (TinyViT has no position tables): it is the official 1024.
  Stage 0 is convolutional, so its head count and window size keep the official values.
  """
  shape = lambda key: tuple(state_dict[key].shape)
  stages = sorted({int(m.group(1)) for k in state_dict if (m := re.match(r"image_encoder\.layers\.(\d+)\.", k))})
  depths = tuple(len({m.group(1) for k in state_dict
                      if (m := re.match(rf"image_encoder\.layers\.{i}\.blocks\.(\d+)\.", k))}) for i in stages)
  dims = (shape("image_encoder.layers.0.blocks.0.conv1.c.weight")[1],) + tuple(
      shape(f"image_encoder.layers.{i}.blocks.0.attn.qkv.weight")[1] for i in stages[1:])
  biases = [shape(f"image_encoder.layers.{i}.blocks.0.attn.attention_biases") for i in stages[1:]]
  default = VARIANTS["vit_t"]
  # A window of w x w tokens has w*w distinct offsets (|dy|, |dx|).
  windows = (default["window_sizes"][0],) + tuple(int(round(np.sqrt(b[1]))) for b in biases)
  heads = (default["num_heads"][0],) + tuple(b[0] for b in biases)
  hidden = shape("image_encoder.layers.0.blocks.0.conv1.c.weight")[0]
  mlp = shape(f"image_encoder.layers.{stages[1]}.blocks.0.mlp.fc1.weight")[0]
  return sam_config("vit_t", embed_dims=dims, depths=depths, num_heads=heads, window_sizes=windows,
                    mlp_ratio=mlp / dims[1], mbconv_expand_ratio=hidden / dims[0],
                    local_conv_size=shape(f"image_encoder.layers.{stages[1]}.blocks.0.local_conv.c.weight")[-1],
                    in_chans=shape(STEM_KEY)[1], out_chans=shape("image_encoder.neck.0.weight")[0])
