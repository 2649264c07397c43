"""Small building blocks shared by SAM's encoder and decoder (mirroring segment_anything/modeling/common.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxris.models.layers import axes, dense, layer_norm  # noqa: F401  (SAM's modules take it from here)
from jaxris.ops.activations import gelu  # noqa: F401  (torch.nn.GELU(): exact, not the tanh approximation)


class GELU(nnx.Module):
  """Parameter-free activation kept as a module so nn.Sequential indices line up with PyTorch."""

  def __call__(self, x):
    return gelu(x)


class MLPBlock(nnx.Module):
  """lin1 -> activation -> lin2 (segment_anything.modeling.common.MLPBlock)."""

  def __init__(self, dim: int, mlp_dim: int, act=gelu, *, rngs: nnx.Rngs, dtype=None):
    self.lin1 = nnx.Linear(dim, mlp_dim, dtype=dtype, rngs=rngs, **dense("embed", "mlp"))
    self.lin2 = nnx.Linear(mlp_dim, dim, dtype=dtype, rngs=rngs, **dense("mlp", "embed"))
    self.act = act

  def __call__(self, x):
    return self.lin2(self.act(self.lin1(x)))


class MLP(nnx.Module):
  """``num_layers`` Linear layers with ReLU between them (the mask decoder's MLP)."""

  def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int,
               sigmoid_output: bool = False, *, rngs: nnx.Rngs, dtype=None):
    dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
    # Megatron pairs: even layers split their outputs over 'mlp', odd ones their inputs.
    names = lambda i: dense("embed", "mlp") if i % 2 == 0 else dense("mlp", "embed")
    self.layers = nnx.List([nnx.Linear(a, b, dtype=dtype, rngs=rngs, **names(i))
                            for i, (a, b) in enumerate(zip(dims[:-1], dims[1:]))])
    self.sigmoid_output = sigmoid_output

  def __call__(self, x):
    for i, layer in enumerate(self.layers):
      x = layer(x)
      if i < len(self.layers) - 1:
        x = jax.nn.relu(x)
    return jax.nn.sigmoid(x) if self.sigmoid_output else x


class ConvTranspose2x2(nnx.Module):
  """ConvTranspose2d(kernel_size=2, stride=2): each input pixel writes its own 2x2 output block.

  With stride equal to the kernel size there is no overlap, so the op is an einsum followed by
  a reshape; that is exact and faster than a general transposed convolution. The kernel is
  stored as (in, 2, 2, out).
  """

  def __init__(self, in_features: int, out_features: int, *, rngs: nnx.Rngs, dtype=None):
    bound = 1.0 / (out_features * 4) ** 0.5  # PyTorch's default init scale for ConvTranspose2d
    key = rngs.params()
    self.kernel = nnx.Param(jax.random.uniform(key, (in_features, 2, 2, out_features), jnp.float32, -bound, bound),
                           **axes("conv_in", None, None, "conv_out"))
    self.bias = nnx.Param(jnp.zeros((out_features,), jnp.float32), **axes("conv_out"))
    self.dtype = dtype

  def __call__(self, x):  # (B, H, W, C_in) -> (B, 2H, 2W, C_out)
    b, h, w, _ = x.shape
    kernel = self.kernel[...]
    if self.dtype is not None:
      x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    y = jnp.einsum("bhwi,iyxo->bhywxo", x, kernel)
    return y.reshape(b, 2 * h, 2 * w, -1) + self.bias[...].astype(y.dtype)


class Embedding(nnx.Module):
  """torch.nn.Embedding used by SAM as a learnt table of vectors: one ``weight`` [num, dim]."""

  def __init__(self, num: int, dim: int, *, rngs: nnx.Rngs):
    self.weight = nnx.Param(jax.random.normal(rngs.params(), (num, dim)), **axes(None, "embed"))  # nn.Embedding's N(0, 1) init
