"""jaxris.ops.activations.gelu: the exact GELU on every path, against PyTorch's, and the reason the
accelerator paths take the erf form (what libtpu compiles for each form)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxris.ops import attention as attention_op
from jaxris.ops.activations import gelu

jax.config.update("jax_default_matmul_precision", "highest")

# Both tails and the middle: large negative inputs are where the two forms round differently.
X = np.concatenate([np.linspace(-12.0, 12.0, 4001), np.random.default_rng(0).standard_normal(4000) * 3]).astype(np.float32)


@pytest.mark.parametrize("path", ["cpu", "xla", "pallas"])
def test_gelu_matches_torch_on_every_path(path):
  expected = torch.nn.functional.gelu(torch.from_numpy(X.copy())).numpy()  # the erf form, exact
  with attention_op.use(path):
    ours = np.asarray(jax.jit(gelu)(jnp.asarray(X)))
  np.testing.assert_allclose(ours, expected, rtol=0, atol=2e-6)
  assert np.all(ours >= -0.17) and np.all(np.abs(ours[X > 6] - X[X > 6]) < 1e-5)


def test_the_cpu_path_keeps_jax_form_to_the_bit():
  # The recorded CPU runs (README's RefShapes tables) were trained with jax.nn.gelu's erfc form.
  with attention_op.use("cpu"):
    ours = jax.jit(gelu)(jnp.asarray(X))
  np.testing.assert_array_equal(np.asarray(ours), np.asarray(jax.jit(lambda x: jax.nn.gelu(x, approximate=False))(X)))


def test_gelu_gradient_matches_torch_on_the_accelerator_path():
  x = torch.from_numpy(X.copy()).requires_grad_(True)
  torch.nn.functional.gelu(x).sum().backward()
  with attention_op.use("xla"):
    grad = jax.jit(jax.grad(lambda x: gelu(x).sum()))(jnp.asarray(X))
  np.testing.assert_allclose(np.asarray(grad), x.grad.numpy(), rtol=0, atol=5e-6)


def _tpu_mlp_hlo(act) -> str:
  """The compiled TPU module of a bf16 MLP (fc1 -> act -> fc2) on one v5p chip, built by libtpu here."""
  pytest.importorskip("libtpu")
  from jaxris.aot import lower_for_tpu, tpu_devices

  chip = tpu_devices("v5p:2x2x1")[:1]
  sharding = jax.sharding.SingleDeviceSharding(chip[0])
  spec = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.bfloat16, sharding=sharding)
  mlp = lambda x, w1, w2: jnp.sum((act(x @ w1) @ w2).astype(jnp.float32))
  with jax.default_matmul_precision("default"):
    return lower_for_tpu(jax.jit(mlp), spec(2, 4096, 256), spec(256, 1024), spec(1024, 256)).compile().as_text()


def test_on_tpu_the_erf_form_has_no_sign_mask_pass():
  # jax's erfc form: libtpu stores the sign of the argument as a bit mask (u8) in a pass of its own
  # over the hidden activations; the erf form fuses into the matmul that consumes them.
  assert "u8[" in _tpu_mlp_hlo(lambda h: jax.nn.gelu(h, approximate=False))
  assert "u8[" not in _tpu_mlp_hlo(gelu)  # lower_for_tpu traces on the TPU's path
