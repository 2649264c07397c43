"""Image encoder parity against segment_anything's ImageEncoderViT (random weights)."""

from functools import partial

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx
from segment_anything.modeling import ImageEncoderViT as OfficialEncoder

from jaxris.ops.attention import window_partition, window_unpartition
from jaxris.weights import sam as sam_weights
from parity import assert_close
from sam_fixtures import nchw, nhwc
from jaxris.weights.random_torch import randomize_


def official_encoder(embed_dim, depth, num_heads, global_attn_indexes, img_size=1024, use_abs_pos=True, seed=0):
  torch.manual_seed(seed)
  enc = OfficialEncoder(img_size=img_size, embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=4,
                        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), qkv_bias=True, use_rel_pos=True,
                        use_abs_pos=use_abs_pos, global_attn_indexes=list(global_attn_indexes), window_size=14,
                        out_chans=256)
  return randomize_(enc, seed)


@nnx.jit
def _encode(encoder, x):
  return encoder(x)


def run_both(official, x: torch.Tensor):
  with torch.no_grad():
    ref = official(x)
  ours = nchw(_encode(sam_weights.encoder_from_torch(official.state_dict()), jnp.asarray(nhwc(x))))
  return ours, ref


@pytest.mark.slow
def test_vit_b_full_size_1024():
  official = official_encoder(768, 12, 12, (2, 5, 8, 11))
  x = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(1))
  assert_close(*run_both(official, x), what="vit_b encoder at 1024")


@pytest.mark.parametrize("embed_dim,num_heads,name", [(1024, 16, "vit_l"), (1280, 16, "vit_h")])
def test_reduced_depth_large_widths(embed_dim, num_heads, name):
  # Full width and head count of vit_l / vit_h, two blocks (one windowed, one global), 256 px input:
  # a 16x16 grid that pads to 28x28 windows.
  official = official_encoder(embed_dim, 2, num_heads, (1,), img_size=256)
  x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(2))
  assert_close(*run_both(official, x), what=f"{name} reduced encoder")


def test_512_input_batch_two():
  official = official_encoder(96, 3, 4, (1,), img_size=512)
  x = torch.randn(2, 3, 512, 512, generator=torch.Generator().manual_seed(3))
  assert_close(*run_both(official, x), what="encoder at 512")


def test_non_square_grid_without_abs_pos():
  # 320 x 448 -> a 20 x 28 grid: non-square, and 20 is not a multiple of the window (14).
  official = official_encoder(96, 3, 4, (1,), img_size=448, use_abs_pos=False)
  x = torch.randn(1, 3, 320, 448, generator=torch.Generator().manual_seed(4))
  assert_close(*run_both(official, x), what="encoder on a 20x28 grid")


def test_non_square_grid_with_bicubic_pos_embed():
  # The official module cannot add its 16x16 pos_embed to a 10x22 grid; the reference here is the
  # official modules with the position embedding resized by torch's bicubic F.interpolate.
  official = official_encoder(96, 2, 4, (1,), img_size=256)
  x = torch.randn(1, 3, 160, 352, generator=torch.Generator().manual_seed(5))
  with torch.no_grad():
    t = official.patch_embed(x)
    pos = F.interpolate(official.pos_embed.permute(0, 3, 1, 2), size=t.shape[1:3], mode="bicubic",
                        align_corners=False).permute(0, 2, 3, 1)
    t = t + pos
    for blk in official.blocks:
      t = blk(t)
    ref = official.neck(t.permute(0, 3, 1, 2))
  ours = nchw(_encode(sam_weights.encoder_from_torch(official.state_dict()), jnp.asarray(nhwc(x))))
  assert_close(ours, ref, what="encoder with resized pos_embed")


@pytest.mark.parametrize("h,w", [(14, 14), (20, 28), (9, 31), (64, 64), (1, 15)])
def test_window_partition_round_trip_and_layout(h, w):
  from segment_anything.modeling.image_encoder import window_partition as official_partition
  x = np.random.default_rng(0).standard_normal((2, h, w, 3)).astype(np.float32)
  ours, padded = window_partition(jnp.asarray(x), 14)
  ref, ref_padded = official_partition(torch.tensor(x), 14)
  assert padded == ref_padded
  np.testing.assert_array_equal(np.asarray(ours), ref.numpy())
  np.testing.assert_array_equal(np.asarray(window_unpartition(ours, 14, padded, (h, w))), x)


@pytest.mark.parametrize("grid,step_logits,num_prefix", [
    ((5, 7), 8 * 38, 3),  # 5 blocks of 8 queries (2 padded); terms computed before the loop
    ((5, 7), 4 * 38 * 38, 3),  # 4 whole (batch, head) sequences a step
    ((5, 7), 4 * 35 * 35, 0),  # the same, each step computing its own terms (windowed blocks)
    ((4, 8), 16 * 32, 0),  # 2 blocks of 2 grid rows, each computing its own terms (global blocks)
])
def test_stepped_attention_matches_one_softmax(monkeypatch, grid, step_logits, num_prefix):
  # Attention runs a cache-sized step at a time. Tiny step budgets force every kind of step on
  # small grids (+ prefix tokens, which get no relative-position term). Reference: the official
  # formula, one softmax over the full logits plus the zero-padded decomposed bias.
  import jax
  from jaxris.models.sam import image_encoder as ie
  from jaxris.ops import attention as attention_op

  monkeypatch.setattr(attention_op, "_STEP_LOGITS", step_logits)
  heads, dim = 4, 32
  attn = ie.Attention(dim, heads, True, True, grid, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(0)
  attn.rel_pos_h[...] = jnp.asarray(rng.standard_normal(attn.rel_pos_h.shape), jnp.float32)
  attn.rel_pos_w[...] = jnp.asarray(rng.standard_normal(attn.rel_pos_w.shape), jnp.float32)
  x = jnp.asarray(rng.standard_normal((2, num_prefix + grid[0] * grid[1], dim)), jnp.float32)

  b, n, _ = x.shape
  qkv = attn.qkv(x).reshape(b, n, 3, heads, dim // heads)
  q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
  logits = jnp.einsum("bqnd,bknd->bnqk", q * attn.scale, k)
  bias = ie.decomposed_rel_pos(q[:, num_prefix:].reshape(b, *grid, heads, dim // heads),
                               attn.rel_pos_h[...], attn.rel_pos_w[...], grid, grid)
  bias = jnp.pad(bias, ((0, 0), (0, 0), (num_prefix, 0), (num_prefix, 0)))
  weights = jax.nn.softmax(logits + bias, axis=-1)
  ref = attn.proj(jnp.einsum("bnqk,bknd->bqnd", weights, v).reshape(b, n, dim))
  assert_close(attn(x, grid, num_prefix), ref, what=f"stepped attention ({step_logits} logits a step)")
