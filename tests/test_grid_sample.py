"""jaxris.ops.grid_sample against torch's F.grid_sample (bilinear, zeros, align_corners=False)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from jaxris.ops.grid_sample import grid_sample, point_sample
from parity import assert_close


def _data(seed, b=2, c=3, h=7, w=11, points=(5, 6), spread=1.3):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((b, c, h, w)).astype(np.float32)
  # spread > 1: part of the points fall outside [-1, 1] (zero padding), some far outside.
  grid = rng.uniform(-spread, spread, (b, *points, 2)).astype(np.float32)
  return x, grid


def _torch(x, grid):
  return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@pytest.mark.parametrize("shape", [dict(), dict(h=1, w=4, points=(3, 1)), dict(c=1, h=16, w=5, points=(40, 2))])
def test_matches_torch(shape):
  x, grid = _data(0, **shape)
  expected = _torch(torch.tensor(x), torch.tensor(grid)).permute(0, 2, 3, 1)
  ours = jax.jit(grid_sample)(jnp.asarray(x.transpose(0, 2, 3, 1)), jnp.asarray(grid))
  assert_close(ours, expected, tol=1e-6)


def test_edges_and_far_outside():
  x = np.random.default_rng(1).standard_normal((1, 2, 4, 5)).astype(np.float32)
  # exact edges, pixel centres, points a fraction of a pixel outside and far outside.
  g = np.array([-1.0, 1.0, -0.9, 0.9, -1.1, 1.1, -1.3, 1.3, 0.0, -5.0, 5.0, 0.1], np.float32)
  grid = np.stack(np.meshgrid(g, g), -1)[None]
  expected = _torch(torch.tensor(x), torch.tensor(grid)).permute(0, 2, 3, 1)
  ours = grid_sample(jnp.asarray(x.transpose(0, 2, 3, 1)), jnp.asarray(grid))
  assert_close(ours, expected, tol=1e-6)
  assert np.all(np.asarray(ours)[0, 9] == 0) and np.all(np.asarray(ours)[0, :, 10] == 0)  # far outside -> 0


def test_gradients_match_torch():
  x, grid = _data(2)
  cot = np.random.default_rng(3).standard_normal((2, 3, 5, 6)).astype(np.float32)
  tx, tg = torch.tensor(x, requires_grad=True), torch.tensor(grid, requires_grad=True)
  (_torch(tx, tg) * torch.tensor(cot)).sum().backward()

  def loss(xs, gs):
    return jnp.sum(grid_sample(xs, gs) * jnp.asarray(cot.transpose(0, 2, 3, 1)))

  gx, gg = jax.grad(loss, argnums=(0, 1))(jnp.asarray(x.transpose(0, 2, 3, 1)), jnp.asarray(grid))
  assert_close(gx, tx.grad.permute(0, 2, 3, 1), tol=1e-5, what="d/dx")
  assert_close(gg, tg.grad, tol=1e-5, what="d/dgrid")


def test_point_sample_is_mask2formers():
  rng = np.random.default_rng(4)
  masks = rng.standard_normal((3, 16, 12)).astype(np.float32)
  coords = rng.uniform(0, 1, (3, 50, 2)).astype(np.float32)
  # Mask2Former: point_sample(masks[:, None], coords) -> [N, 1, P]; coords get a unit axis for grid_sample.
  expected = F.grid_sample(torch.tensor(masks)[:, None], 2.0 * torch.tensor(coords)[:, :, None] - 1.0,
                           align_corners=False)[:, :, :, 0]
  ours = point_sample(jnp.asarray(masks)[..., None], jnp.asarray(coords))
  assert ours.shape == (3, 50, 1)
  assert_close(ours[..., 0], expected[:, 0], tol=1e-6)


def test_vmaps_and_batches_agree():
  x, grid = _data(5)
  xs, gs = jnp.asarray(x.transpose(0, 2, 3, 1)), jnp.asarray(grid)
  batched = grid_sample(xs, gs)
  mapped = jax.vmap(lambda a, g: grid_sample(a[None], g[None])[0])(xs, gs)
  np.testing.assert_allclose(batched, mapped, rtol=0, atol=1e-6)
