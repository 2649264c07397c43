"""SAM ViT-B image encoder forward, JAX vs the official PyTorch module (same weights, same run).

Cases: 1024x1024 (the official size) and 512x512 (DIT's size; the official module built with
img_size=512), batch 1, fp32, default matmul precision (on CPU an fp32 XLA dot is a full fp32
dot whatever the precision flag, so this is the same arithmetic the parity tests check; the
benchmark also prints the max error of the JAX output against PyTorch's as a sanity check).

JAX and PyTorch calls alternate (one call of each per repeat) so that load from other jobs on
the machine hits both alike; each reports its median.

FLOPs are an analytic count of the model's multiply-adds (x2), the same for every formulation:
the patch-embedding and neck convolutions, and per block the qkv/proj/MLP Linear layers on the
H*W image tokens, the attention matmuls (q k^T and weights v) and the decomposed relative-position
einsums. Windowed attention is counted over the zero-padded windows (the padded tokens are keys
of the official model's softmax, so that work is part of the model). Elementwise ops (softmax,
LayerNorm, GELU) are not counted. XLA's own ``cost_analysis()`` count is printed next to it for
reference only: it counts the body of each ``lax.map`` loop once, not once per iteration, so it
under-counts the attention, which the encoder computes in cache-sized steps inside such loops.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from benchmarks import timing

SIZES = (1024, 512)
VIT_B = dict(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11))


def official_vit_b(img_size: int, seed: int = 0):
  """segment_anything's ImageEncoderViT built as build_sam_vit_b does, with random weights."""
  import torch
  from segment_anything.modeling import ImageEncoderViT

  torch.manual_seed(seed)
  enc = ImageEncoderViT(img_size=img_size, patch_size=16, mlp_ratio=4, qkv_bias=True, use_rel_pos=True,
                        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), window_size=14, out_chans=256,
                        **{k: (list(v) if isinstance(v, tuple) else v) for k, v in VIT_B.items()})
  # The official init leaves pos_embed and the relative-position tables at zero: fill them so
  # both implementations compute with non-trivial values everywhere.
  with torch.no_grad():
    for name, p in enc.named_parameters():
      if "pos" in name:
        p.normal_(0.0, 0.02)
  return enc.eval()


def analytic_flops(img_size: int, patch: int = 16, c: int = 768, depth: int = 12, heads: int = 12,
                   window: int = 14, global_blocks=(2, 5, 8, 11), out_chans: int = 256) -> int:
  """2 x multiply-adds of one forward (see the module docstring for what is counted)."""
  g = img_size // patch
  n = g * g
  d = c // heads
  flops = 2 * n * (3 * patch * patch) * c  # patch embedding
  for i in range(depth):
    flops += 2 * n * c * (3 * c + c + 2 * 4 * c)  # qkv, proj, mlp
    if i in global_blocks:
      seqs, s, side = 1, n, g
    else:
      nw = -(-g // window)
      seqs, s, side = nw * nw, window * window, window
    flops += seqs * heads * (2 * 2 * s * s * d)  # q k^T and weights v
    flops += seqs * heads * (2 * 2 * s * side * d)  # rel_h and rel_w einsums
  flops += 2 * n * c * out_chans + 2 * n * out_chans * out_chans * 9  # neck
  return flops


def cases(args) -> list[dict]:
  import jax
  import jax.numpy as jnp
  import torch
  from flax import nnx

  from jaxris.weights.sam import encoder_from_torch

  rows = []
  for size in SIZES:
    official = official_vit_b(size)
    encoder = encoder_from_torch(official.state_dict())
    graphdef, state = nnx.split(encoder)
    fwd = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))
    x_t = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    x_j = jnp.asarray(x_t.permute(0, 2, 3, 1).numpy())

    compiled = fwd.lower(state, x_j).compile()
    xla_flops = (compiled.cost_analysis() or {}).get("flops")
    run_jax = lambda: compiled(state, x_j).block_until_ready()

    def run_ref():
      with torch.no_grad():
        return official(x_t)

    # Sanity: same weights give the same embeddings (relative to the output's scale).
    ours = np.asarray(compiled(state, x_j)).transpose(0, 3, 1, 2)
    ref = run_ref().numpy()
    err = np.abs(ours - ref).max() / np.abs(ref).max()

    run_jax(), run_ref()  # warm-up
    jax_t, ref_t = [], []
    for _ in range(args.repeats):  # interleaved, one call each per round
      jax_t.append(timing.median_seconds(run_jax, repeats=1, warmup=0))
      ref_t.append(timing.median_seconds(run_ref, repeats=1, warmup=0))
    flops = analytic_flops(size)
    print(f"# sam vit_b {size}: analytic {flops / 1e9:.0f} GFLOP (XLA cost_analysis, loop bodies once: "
          f"{xla_flops / 1e9 if xla_flops else float('nan'):.0f}); max |JAX - PyTorch| = "
          f"{err:.1e} of the output scale; JAX times {', '.join(f'{t:.2f}' for t in jax_t)} s; "
          f"PyTorch ({torch.get_num_threads()} threads) {', '.join(f'{t:.2f}' for t in ref_t)} s",
          flush=True)
    rows.append(dict(case=f"sam vit_b encoder {size}x{size}", jax_s=float(np.median(jax_t)),
                     ref_s=float(np.median(ref_t)), flops=flops))
  return rows
