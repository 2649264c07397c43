"""MobileSAM's image encoder: TinyViT (mobile_sam/modeling/tiny_vit_sam.py) in Flax NNX, NHWC, eval mode.

Parameter paths mirror the official state_dict (``patch_embed.seq.0.c``, ``patch_embed.seq.0.bn``,
``layers.0.blocks.N.conv1``, ``layers.N.downsample.conv2``, ``layers.N.blocks.M.attn.qkv``,
``...attn.attention_biases``, ``...local_conv``, ``neck.0`` ...), so the converter is a table of
renames (batch norm ``weight/running_mean/running_var`` -> ``scale/mean/var``).

The official model, as MobileSAM builds it (``build_sam_vit_t``): a conv stem (two 3x3 stride-2
Conv2d_BN, /4), stage 0 of MBConv blocks, then stages of windowed-attention blocks, each stage
but the last ending in a patch merging that halves the grid (except into 320/448/576 channels,
where the official code uses stride 1: MobileSAM's last merge keeps 64x64 at 1024 px), and SAM's
neck to 256 channels. Every Conv2d_BN is a bias-free convolution followed by BatchNorm2d with its
running statistics (the official ``eval()`` forward). Its unused classifier (``norm_head``,
``head``) is not built.

Differences from the official forward, none of which changes its results where it runs:
  * the official ``forward_features`` reshapes the tokens to a hard-coded 64x64 grid, so it only
    runs at 1024 px; here every grid is read from the input's shape, so any input size works (a
    multiple of 16 gives the grids the official blocks are built for);
  * tokens stay [B, H, W, C] between blocks instead of being flattened to [B, H*W, C].

(A trap of the official code, not ours: its Attention caches ``attention_biases[:, idxs]`` in an
``ab`` buffer when ``eval()`` runs, and ``build_sam_vit_t(checkpoint=...)`` calls ``eval()`` before
loading the weights; the official model runs with the real biases only after another ``eval()``,
as the MobileSAM README does.)
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxris.models.layers import axes, conv, dense, norm
from jaxris.models.sam.common import GELU, gelu, layer_norm
from jaxris.ops.attention import attention, window_partition, window_unpartition

# PatchMerging into these widths uses a stride-1 depthwise conv (hard-coded in the official code).
STRIDE_1_MERGE_DIMS = (320, 448, 576)


@dataclasses.dataclass(frozen=True)
class TinyViTConfig:
  """The arguments of the official ``TinyViT`` that MobileSAM uses; defaults are ``build_sam_vit_t``'s."""
  img_size: int = 1024
  in_chans: int = 3
  embed_dims: Sequence[int] = (64, 128, 160, 320)
  depths: Sequence[int] = (2, 2, 6, 2)
  num_heads: Sequence[int] = (2, 4, 5, 10)   # num_heads[0] and window_sizes[0] are unused: stage 0 is
  window_sizes: Sequence[int] = (7, 7, 14, 7)  # convolutional (kept to mirror the official arguments)
  mlp_ratio: float = 4.0
  mbconv_expand_ratio: float = 4.0
  local_conv_size: int = 3
  out_chans: int = 256  # the neck's width (256 in the official code)

  @property
  def grid(self) -> int:
    """The embedding's side (the official ``image_size // vit_patch_size``)."""
    return self.img_size // 16

  @classmethod
  def from_dict(cls, d: dict) -> "TinyViTConfig":
    seqs = ("embed_dims", "depths", "num_heads", "window_sizes")
    return cls(**{k: tuple(v) if k in seqs else v for k, v in d.items()})


class Conv2dBN(nnx.Module):
  """Conv2d_BN: bias-free Conv2d (``c``) -> BatchNorm2d (``bn``) with its running statistics.

  The eval-mode batch norm is an affine map per output channel, applied here by scaling the
  kernel and adding a bias (the official ``Conv2d_BN.fuse``): the same arithmetic up to rounding
  (~1e-7 relative), one pass over the output instead of two. Depthwise convolutions are computed
  as a sum of shifted views, 1x1 ones as a matmul (see ``_depthwise_conv``).
  """

  def __init__(self, a: int, b: int, ks: int = 1, stride: int = 1, pad: int = 0, groups: int = 1, *,
               rngs: nnx.Rngs, dtype=None):
    self.c = nnx.Conv(a, b, (ks, ks), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                      feature_group_count=groups, use_bias=False, dtype=dtype, rngs=rngs,
                      **conv(None if groups > 1 else "conv_in", "conv_out"))  # depthwise: one input channel
    self.bn = nnx.BatchNorm(b, epsilon=1e-5, use_running_average=True, dtype=dtype, rngs=rngs, **norm())
    self.ks, self.stride, self.pad, self.depthwise = ks, stride, pad, groups == a == b and groups > 1
    self.dtype = dtype

  def __call__(self, x):
    bn = self.bn
    scale = bn.scale[...] * jax.lax.rsqrt(bn.var[...] + bn.epsilon)
    kernel = self.c.kernel[...] * scale
    bias = bn.bias[...] - bn.mean[...] * scale
    if self.dtype is not None:
      x, kernel, bias = x.astype(self.dtype), kernel.astype(self.dtype), bias.astype(self.dtype)
    if self.depthwise:
      y = _depthwise_conv(x, kernel[:, :, 0], self.stride, self.pad)
    elif self.ks == 1 and self.stride == 1 and self.pad == 0:
      y = x @ kernel[0, 0]
    else:
      s, p = self.stride, self.pad
      y = jax.lax.conv_general_dilated(x, kernel, (s, s), ((p, p), (p, p)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + bias


def _depthwise_conv(x, kernel, stride: int, pad: int):
  """Depthwise convolution [B, H, W, C] * [k, k, C] (zero padding `pad`) as a sum of k*k strided views.

  XLA fuses the views, the products and what follows (bias, GELU) into one loop; its grouped
  convolution on CPU measured 3-4x slower (1.28 s vs 0.39 s for 3x3 over 256x256x256).
  """
  k = kernel.shape[0]
  xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  h = (xp.shape[1] - k) // stride + 1
  w = (xp.shape[2] - k) // stride + 1
  out = None
  for i in range(k):
    for j in range(k):
      view = xp[:, i:i + stride * (h - 1) + 1:stride, j:j + stride * (w - 1) + 1:stride]
      out = view * kernel[i, j] if out is None else out + view * kernel[i, j]
  return out


class PatchEmbed(nnx.Module):
  """Conv stem: Conv2d_BN(3x3, /2) -> GELU -> Conv2d_BN(3x3, /2); ``seq`` indices as nn.Sequential."""

  def __init__(self, in_chans: int, embed_dim: int, *, rngs: nnx.Rngs, dtype=None):
    n = embed_dim
    self.seq = nnx.List([Conv2dBN(in_chans, n // 2, 3, 2, 1, rngs=rngs, dtype=dtype), GELU(),
                         Conv2dBN(n // 2, n, 3, 2, 1, rngs=rngs, dtype=dtype)])

  def __call__(self, x):
    for layer in self.seq:
      x = layer(x)
    return x


class MBConv(nnx.Module):
  """Inverted residual: 1x1 expand -> 3x3 depthwise -> 1x1 project, GELU after each and the sum."""

  def __init__(self, in_chans: int, out_chans: int, expand_ratio: float, *, rngs: nnx.Rngs, dtype=None):
    hidden = int(in_chans * expand_ratio)
    self.conv1 = Conv2dBN(in_chans, hidden, ks=1, rngs=rngs, dtype=dtype)
    self.conv2 = Conv2dBN(hidden, hidden, ks=3, stride=1, pad=1, groups=hidden, rngs=rngs, dtype=dtype)
    self.conv3 = Conv2dBN(hidden, out_chans, ks=1, rngs=rngs, dtype=dtype)

  def __call__(self, x):
    y = gelu(self.conv1(x))
    y = gelu(self.conv2(y))
    return gelu(self.conv3(y) + x)


class PatchMerging(nnx.Module):
  """1x1 conv -> GELU -> 3x3 depthwise (stride 2, or 1 into STRIDE_1_MERGE_DIMS) -> GELU -> 1x1 conv."""

  def __init__(self, dim: int, out_dim: int, *, rngs: nnx.Rngs, dtype=None):
    stride = 1 if out_dim in STRIDE_1_MERGE_DIMS else 2
    self.conv1 = Conv2dBN(dim, out_dim, 1, 1, 0, rngs=rngs, dtype=dtype)
    self.conv2 = Conv2dBN(out_dim, out_dim, 3, stride, 1, groups=out_dim, rngs=rngs, dtype=dtype)
    self.conv3 = Conv2dBN(out_dim, out_dim, 1, 1, 0, rngs=rngs, dtype=dtype)

  def __call__(self, x):
    return self.conv3(gelu(self.conv2(gelu(self.conv1(x)))))


@functools.lru_cache(maxsize=None)
def attention_bias_idxs(window: int) -> np.ndarray:
  """[N, N] index into ``attention_biases`` for N = window**2 tokens (the official buffer).

  Each distinct offset (|dy|, |dx|) gets the next index in the order the official loop meets it.
  """
  points = list(itertools.product(range(window), range(window)))
  offsets: dict[tuple[int, int], int] = {}
  idxs = [offsets.setdefault((abs(p[0] - q[0]), abs(p[1] - q[1])), len(offsets)) for p in points for q in points]
  return np.asarray(idxs, np.int32).reshape(len(points), len(points))


class Attention(nnx.Module):
  """LayerNorm -> multi-head attention with a learnt bias per head and window offset -> proj.

  The official qkv output is laid out per head as [q (key_dim), k (key_dim), v (d)]; MobileSAM
  uses attn_ratio=1, so d = key_dim = dim // num_heads.
  """

  def __init__(self, dim: int, key_dim: int, num_heads: int, resolution: int, *, rngs: nnx.Rngs, dtype=None):
    self.num_heads = num_heads
    self.key_dim = key_dim
    self.scale = key_dim ** -0.5
    self.norm = layer_norm(dim, 1e-5, rngs, dtype)
    self.qkv = nnx.Linear(dim, 3 * key_dim * num_heads, dtype=dtype, rngs=rngs, **dense("embed", "qkv"))
    self.proj = nnx.Linear(key_dim * num_heads, dim, dtype=dtype, rngs=rngs, **dense("heads", "embed"))
    self.resolution = resolution
    num_offsets = int(attention_bias_idxs(resolution).max()) + 1
    self.attention_biases = nnx.Param(jnp.zeros((num_heads, num_offsets)), **axes(None, None))

  def __call__(self, x):
    """x: [S, N, C] sequences of N = window**2 tokens -> [S, N, C]."""
    s, n, _ = x.shape
    heads, kd = self.num_heads, self.key_dim
    qkv = self.qkv(self.norm(x)).reshape(s, n, heads, 3, kd)
    # The official eval() forward indexes the table once into its ``ab`` buffer; same values.
    bias = self.attention_biases[...][:, attention_bias_idxs(self.resolution)].astype(qkv.dtype)  # [heads, N, N]
    out = attention(qkv[..., 0, :], qkv[..., 1, :], qkv[..., 2, :], scale=self.scale, bias=bias)
    return self.proj(out.reshape(s, n, heads * kd))


class Mlp(nnx.Module):
  """LayerNorm -> fc1 -> GELU -> fc2."""

  def __init__(self, dim: int, hidden: int, *, rngs: nnx.Rngs, dtype=None):
    self.norm = layer_norm(dim, 1e-5, rngs, dtype)
    self.fc1 = nnx.Linear(dim, hidden, dtype=dtype, rngs=rngs, **dense("embed", "mlp"))
    self.fc2 = nnx.Linear(hidden, dim, dtype=dtype, rngs=rngs, **dense("mlp", "embed"))

  def __call__(self, x):
    return self.fc2(gelu(self.fc1(self.norm(x))))


class TinyViTBlock(nnx.Module):
  """x + window attention -> depthwise local conv -> x + MLP."""

  def __init__(self, dim: int, num_heads: int, window_size: int, mlp_ratio: float, local_conv_size: int, *,
               rngs: nnx.Rngs, dtype=None):
    self.window_size = window_size
    self.attn = Attention(dim, dim // num_heads, num_heads, window_size, rngs=rngs, dtype=dtype)
    self.mlp = Mlp(dim, int(dim * mlp_ratio), rngs=rngs, dtype=dtype)
    pad = local_conv_size // 2
    self.local_conv = Conv2dBN(dim, dim, ks=local_conv_size, stride=1, pad=pad, groups=dim, rngs=rngs, dtype=dtype)

  def __call__(self, x):
    """x: [B, H, W, C] -> [B, H, W, C]."""
    b, h, w, c = x.shape
    ws = self.window_size
    # The official block zero-pads the tokens *before* the attention's LayerNorm, so padded
    # positions enter as keys with the value of LayerNorm(0); window_partition pads the same way.
    windows, padded = window_partition(x, ws)
    y = self.attn(windows.reshape(-1, ws * ws, c))
    x = x + window_unpartition(y.reshape(-1, ws, ws, c), ws, padded, (h, w))
    x = self.local_conv(x)
    return x + self.mlp(x)


class ConvLayer(nnx.Module):
  """Stage 0: MBConv blocks, then a patch merging."""

  def __init__(self, dim: int, depth: int, out_dim: int, expand_ratio: float, *, rngs: nnx.Rngs, dtype=None):
    self.blocks = nnx.List([MBConv(dim, dim, expand_ratio, rngs=rngs, dtype=dtype) for _ in range(depth)])
    self.downsample = PatchMerging(dim, out_dim, rngs=rngs, dtype=dtype)

  def __call__(self, x):
    for block in self.blocks:
      x = block(x)
    return self.downsample(x)


class BasicLayer(nnx.Module):
  """An attention stage: TinyViT blocks, then a patch merging unless it is the last stage."""

  def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, mlp_ratio: float,
               local_conv_size: int, out_dim: int | None, *, rngs: nnx.Rngs, dtype=None):
    self.blocks = nnx.List([TinyViTBlock(dim, num_heads, window_size, mlp_ratio, local_conv_size,
                                         rngs=rngs, dtype=dtype) for _ in range(depth)])
    self.downsample = None if out_dim is None else PatchMerging(dim, out_dim, rngs=rngs, dtype=dtype)

  def __call__(self, x):
    for block in self.blocks:
      x = block(x)
    return x if self.downsample is None else self.downsample(x)


class TinyViT(nnx.Module):
  def __init__(self, cfg: TinyViTConfig, *, rngs: nnx.Rngs, dtype=None):
    self.cfg = cfg
    dims, n = cfg.embed_dims, len(cfg.depths)
    self.patch_embed = PatchEmbed(cfg.in_chans, dims[0], rngs=rngs, dtype=dtype)
    self.layers = nnx.List(
        [ConvLayer(dims[0], cfg.depths[0], dims[1], cfg.mbconv_expand_ratio, rngs=rngs, dtype=dtype)] +
        [BasicLayer(dims[i], cfg.depths[i], cfg.num_heads[i], cfg.window_sizes[i], cfg.mlp_ratio,
                    cfg.local_conv_size, dims[i + 1] if i < n - 1 else None, rngs=rngs, dtype=dtype)
         for i in range(1, n)])
    self.neck = nnx.List([
        nnx.Conv(dims[-1], cfg.out_chans, (1, 1), use_bias=False, dtype=dtype, rngs=rngs, **conv()),
        layer_norm(cfg.out_chans, 1e-6, rngs, dtype),
        nnx.Conv(cfg.out_chans, cfg.out_chans, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                 dtype=dtype, rngs=rngs, **conv()),
        layer_norm(cfg.out_chans, 1e-6, rngs, dtype),
    ])

  def __call__(self, images: jnp.ndarray) -> jnp.ndarray:
    """[B, H, W, 3] normalised pixels -> [B, H/16, W/16, out_chans] image embeddings."""
    x = self.patch_embed(images)
    for layer in self.layers:
      x = layer(x)
    for layer in self.neck:
      x = layer(x)
    return x
