"""Initialisers and small layers the bridge's modules share (channels-last throughout).

The bridge is trained from scratch on top of frozen backbones, so its initialisations matter
and follow the official code's: PyTorch's defaults where it calls none (PWAM, the pyramids, the
language projections), xavier where Mask2Former's layers reset themselves, and detectron2's
``c2_xavier_fill`` for the FPN convolutions. Each is spelled out once here:

  torch default   weight and bias U(+-1/sqrt(fan_in)) (kaiming_uniform with a=sqrt(5))
  xavier          U(+-sqrt(6 / (fan_in + fan_out))), bias 0
  c2_xavier_fill  U(+-sqrt(3 / fan_in)) (kaiming_uniform with a=1), bias 0

Flax's variance-scaling initialisers count a convolution's fan like PyTorch (channels times
taps), so these equal the official distributions, not just their scale.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxris.models.layers import conv, dense, norm

_TORCH_DEFAULT = nnx.initializers.variance_scaling(1 / 3, "fan_in", "uniform")
_C2_XAVIER = nnx.initializers.variance_scaling(1.0, "fan_in", "uniform")
_XAVIER = nnx.initializers.xavier_uniform()
_ZEROS = nnx.initializers.zeros_init()


def _uniform_bias(fan_in: int):
  bound = fan_in ** -0.5
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def torch_linear(din: int, dout: int, names=("embed", "embed"), *, rngs: nnx.Rngs, dtype=None) -> nnx.Linear:
  """nn.Linear (or a 1x1 nn.Conv1d) with PyTorch's default initialisation."""
  return nnx.Linear(din, dout, kernel_init=_TORCH_DEFAULT, bias_init=_uniform_bias(din), dtype=dtype, rngs=rngs,
                    **dense(*names))


def xavier_linear(din: int, dout: int, names=("embed", "embed"), *, rngs: nnx.Rngs, torch_bias: bool = False,
                  dtype=None) -> nnx.Linear:
  """nn.Linear whose weight was xavier_uniform-reset; the bias is 0, or PyTorch's default when the
  reset touched only weights (``torch_bias``: the layers that xavier every parameter with dim > 1)."""
  return nnx.Linear(din, dout, kernel_init=_XAVIER, bias_init=_uniform_bias(din) if torch_bias else _ZEROS,
                    dtype=dtype, rngs=rngs, **dense(*names))


def conv2d(cin: int, cout: int, k: int, *, init: str = "torch", use_bias: bool = True, rngs: nnx.Rngs,
           dtype=None) -> nnx.Conv:
  """nn.Conv2d(cin, cout, k, padding=k // 2) on NHWC, initialised as ``init``: "torch" (PyTorch's
  default), "xavier" (xavier_uniform, bias 0) or "c2_xavier" (detectron2's c2_xavier_fill)."""
  kernel_init = {"torch": _TORCH_DEFAULT, "xavier": _XAVIER, "c2_xavier": _C2_XAVIER}[init]
  bias_init = _uniform_bias(cin * k * k) if init == "torch" else _ZEROS
  pad = k // 2
  return nnx.Conv(cin, cout, (k, k), padding=((pad, pad), (pad, pad)), use_bias=use_bias, kernel_init=kernel_init,
                  bias_init=bias_init, dtype=dtype, rngs=rngs, **conv())


def group_norm(channels: int, groups: int = 32, *, rngs: nnx.Rngs) -> nnx.GroupNorm:
  """nn.GroupNorm(groups, channels) (eps 1e-5, two-pass variance as PyTorch) on NHWC."""
  return nnx.GroupNorm(channels, num_groups=groups, epsilon=1e-5, use_fast_variance=False, rngs=rngs, **norm())


def instance_norm(x: jnp.ndarray, axis: int = -2, eps: float = 1e-5) -> jnp.ndarray:
  """nn.InstanceNorm1d without affine (and without running statistics): each sample's channels are
  normalised over `axis` (the positions; [B, N, C] -> axis -2) with the biased variance."""
  mean = jnp.mean(x, axis=axis, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=axis, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps)


def max_pool(x: jnp.ndarray, k: int) -> jnp.ndarray:
  """nn.MaxPool2d(k, stride=k) on [B, H, W, C]: a remainder that does not fill a window is dropped."""
  if k == 1:
    return x
  b, h, w, c = x.shape
  x = x[:, :h // k * k, :w // k * k]
  return x.reshape(b, h // k, k, w // k, k, c).max(axis=(2, 4))


class ConvNorm(nnx.Module):
  """detectron2's ``Conv2d(..., norm=...)``: a convolution, its norm (``conv`` / ``norm``, as the
  state dict's ``weight`` / ``norm.weight``), then an optional ReLU."""

  def __init__(self, conv_: nnx.Conv, norm_: nnx.Module, relu: bool = False):
    self.conv = conv_
    self.norm = norm_
    self.relu = relu

  def __call__(self, x):
    x = self.norm(self.conv(x))
    return jax.nn.relu(x) if self.relu else x
