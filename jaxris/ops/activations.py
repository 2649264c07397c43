"""The exact GELU, x * Phi(x), as torch.nn.GELU() and F.gelu compute it, in the form each path compiles best.

PyTorch writes it 0.5 x (1 + erf(x / sqrt 2)); jax.nn.gelu(approximate=False) writes the same function
as 0.5 x erfc(-x / sqrt 2). XLA's TPU backend expands erfc with a branch on the sign of its argument and
stores that sign as a bit mask in a pass of its own over the MLP's hidden activations, before the
matmul that consumes them; erf is one polynomial and fuses into that matmul. On a v5p, a SAM-H
windowed block's forward at 1024 px with 2 images (EVF-SAM's frozen encoder) is 2-3% faster in XLA's
estimate with the erf form, and the estimate per instruction puts the mask pass alone at 2.2x the
block's first MLP matmul (`benchmarks/tpu_block.py --window 14 --grid 64 --images 2 --forward-only`).
The two forms differ by rounding (about 1e-6 in float32; both match PyTorch to that). The CPU path
keeps jax's erfc form, so that the CPU runs README records (the RefShapes tables) reproduce to the
last digit; every other path (`attention.path()`: xla, cudnn, pallas) takes PyTorch's erf form.
"""

from __future__ import annotations

import jax
import numpy as np

from jaxris.ops import attention


def gelu(x):
  """Exact GELU (not the tanh approximation): jax's erfc form on the CPU path, PyTorch's erf form on the others."""
  if attention.path() == "cpu":
    return jax.nn.gelu(x, approximate=False)
  return 0.5 * x * (1.0 + jax.lax.erf(x * np.sqrt(0.5).astype(x.dtype)))
