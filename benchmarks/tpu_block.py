"""One SAM ViT block of L-DIT, forward + backward, compiled for one TPU chip: XLA's estimate in 1-2 minutes.

  python benchmarks/tpu_block.py                          # ViT-H's global block, 16 images, v5p
  python benchmarks/tpu_block.py --part attention         # the attention core alone (fold + kernels)
  python benchmarks/tpu_block.py --part attention --no-rel-pos   # ... without relative positions
  python benchmarks/tpu_block.py --part mlp --topology v5e:2x2
  python benchmarks/tpu_block.py --width 768 --heads 12   # ViT-B's
  python benchmarks/tpu_block.py --window 14 --grid 64 --images 2 --forward-only   # EVF-SAM's frozen SAM-H
  python benchmarks/tpu_block.py --depth 8                # 8 blocks stacked, each feeding the next

A whole pod row of benchmarks/pod_plan.py takes 3-30 minutes to compile here; one block takes
seconds, and a train step of L-DIT is 32 (ViT-H) or 12 (ViT-B) of them plus the rest. So this is
the loop for work on the TPU path: change the attention op, see the block's estimate move; then
check the pod row. It may not follow: the cost model charges the asynchronous copies of XLA's
memory-space assignment (MSA), which depend on the whole program (session 15: ViT-H's block 9.87 ->
8.60 ms, its v5p-128 row only 345 -> 335 ms; with MSA off in both, LIBTPU_INIT_ARGS=--xla_msa_enable=false,
the step gains the 41 ms its 32 blocks predict). `--depth N` stacks N blocks; the same environment
variable compiles them without MSA.
The block is SAM's global block as DIT runs it (prefix text slots + a grid of image tokens, with
SAM's relative positions), or a windowed one (`--window`), in bf16, on one chip of `--topology`,
with the images a chip gets in the pod table's rows (16). Figures are XLA's compiler estimates (the TPU
cost model's ``optimal_seconds`` plus what `jaxris.pallas_costs` adds for the Pallas kernels XLA
cannot cost, as `jaxris.aot` does), not measured runs; MFU counts the block's model FLOPs
(forward + backward, 3x the forward's) against the chip's peak.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

from jaxris import aot, pallas_costs  # noqa: E402
from jaxris.models.sam.image_encoder import Block, rel_pos_table  # noqa: E402
from jaxris.ops import attention  # noqa: E402

PARTS = ("block", "attention", "mlp")


def part_loss(part: str, graphdef, images: int, grid: int, prefix: int, width: int, heads: int,
              rel_pos: bool = True, window: int = 0):
  """loss(params, x [B, grid, grid, C], slots [B, prefix, C]) of one part of the block; a windowed
  block (`window` > 0) has no slots and its attention core runs over the padded windows."""

  def loss(params, x, slots):
    if part == "block":  # params: one tree per stacked block, each block's output the next's input
      for p in params:
        block = nnx.merge(graphdef, p)
        if window:
          x = block(x)
        else:
          x, slots = block(x, slots)
      return jnp.sum(x.astype(jnp.float32)) + (0.0 if window else jnp.sum(slots.astype(jnp.float32)))
    block = nnx.merge(graphdef, params[0])
    t = jnp.concatenate([slots, x.reshape(images, grid * grid, width)], axis=1)
    if part == "mlp":
      return jnp.sum((t + block.mlp(block.norm2(t))).astype(jnp.float32))
    # The attention core on q, k, v derived from the tokens (no projections), with the block's tables.
    side, num_prefix = grid, prefix
    if window:
      x, _ = attention.window_partition(x, window)
      t, side, num_prefix = x.reshape(x.shape[0], window * window, width), window, 0
    q = t.reshape(t.shape[0], t.shape[1], heads, width // heads)
    rel = attention.RelPos(rel_pos_table(side, side, block.attn.rel_pos_h[...]),
                           rel_pos_table(side, side, block.attn.rel_pos_w[...]), num_prefix)
    out = attention.attention(q, q * 0.5, q * 0.25, scale=block.attn.scale, rel_pos=rel if rel_pos else None)
    return jnp.sum(out.astype(jnp.float32))
  return loss


def model_flops(part: str, images: int, tokens: int, width: int, keys: int | None = None,
                passes: float = 3.0) -> float:
  """Forward + backward (3x forward; `passes`=1: forward only) matmul FLOPs of the part, at the
  model's true head sizes; each query sees `keys` keys (default: all `tokens`, a global block)."""
  linear = 2 * images * tokens * width * width * (12 if part == "block" else 8)  # qkv+proj+mlp, or mlp
  attend = 4 * images * tokens * (keys or tokens) * width
  return passes * {"block": linear + attend, "mlp": linear, "attention": attend}[part]


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
  p.add_argument("--part", choices=PARTS, default="block", help="the whole block, its attention core or its MLP")
  p.add_argument("--topology", default="v5p:2x2x1", help="a TPU topology; the block runs on its first chip")
  p.add_argument("--images", type=int, default=16, help="images per chip")
  p.add_argument("--grid", type=int, default=32, help="image tokens per side (512 px / 16 px patches)")
  p.add_argument("--prefix", type=int, default=20, help="DIT's text slots ahead of the image tokens")
  p.add_argument("--width", type=int, default=1280, help="embedding width (ViT-H 1280, ViT-B 768)")
  p.add_argument("--heads", type=int, default=16, help="attention heads (ViT-H 16, ViT-B 12)")
  p.add_argument("--no-rel-pos", action="store_true",
                 help="--part attention without SAM's relative-position term (what the fold costs)")
  p.add_argument("--window", type=int, default=0,
                 help="a windowed block (SAM's 14; DIT runs every block global): no prefix slots")
  p.add_argument("--forward-only", action="store_true",
                 help="the forward alone, as a frozen encoder runs it (EVF-SAM's SAM-H)")
  p.add_argument("--depth", type=int, default=1,
                 help="--part block: a stack of this many blocks (the estimate per block grows with depth)")
  a = p.parse_args(argv)
  if a.depth < 1 or (a.depth > 1 and a.part != "block"):
    p.error("--depth takes a positive number, and only with --part block")
  if a.window:
    a.prefix = 0

  gen = aot.parse_topology(a.topology)[0]
  _, peak, bandwidth = aot.CHIPS[gen]
  chip = aot.tpu_devices(a.topology)[:1]
  mesh = Mesh(chip.reshape(1, 1, 1), ("data", "fsdp", "tensor"))
  one_chip = NamedSharding(mesh, P())
  block = nnx.eval_shape(lambda: Block(a.width, a.heads, 4.0, True, True, a.window,
                                       (a.window, a.window) if a.window else (a.grid, a.grid),
                                       rngs=nnx.Rngs(0), dtype=jnp.bfloat16))
  graphdef, params = nnx.split(block)
  params = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=one_chip), params)
  params = [params] * (a.depth if a.part == "block" else 1)  # abstract: the copies share nothing but shapes
  x = jax.ShapeDtypeStruct((a.images, a.grid, a.grid, a.width), jnp.bfloat16, sharding=one_chip)
  slots = jax.ShapeDtypeStruct((a.images, a.prefix, a.width), jnp.bfloat16, sharding=one_chip)
  loss = part_loss(a.part, graphdef, a.images, a.grid, a.prefix, a.width, a.heads, not a.no_rel_pos, a.window)
  step = jax.jit(loss if a.forward_only else jax.grad(loss, argnums=(0, 1, 2)))
  t0 = time.perf_counter()
  with jax.set_mesh(mesh):
    compiled = aot.lower_for_tpu(step, params, x, slots).compile()
  cost = compiled.cost_analysis()
  cost = dict((cost[0] if isinstance(cost, (list, tuple)) else cost) or {})
  kernels = pallas_costs.uncosted_kernels(compiled.as_text())
  seconds, source, added = aot.estimate_step(cost, kernels, peak, bandwidth)
  passes = 1 if a.forward_only else 3
  if a.window:  # the official block pads the grid to whole windows; model FLOPs count the padding
    side = -(-a.grid // a.window) * a.window
    flops = model_flops(a.part, a.images, side * side, a.width, a.window ** 2, passes)
  else:
    flops = model_flops(a.part, a.images, a.prefix + a.grid * a.grid, a.width, None, passes)
  flops *= a.depth
  rows = [
      ("part", f"{a.part}{f' x {a.depth} stacked' if a.depth > 1 else ''}, {'fwd' if a.forward_only else 'fwd + bwd'}, {a.images} images x "
               f"({a.prefix} + {a.grid}x{a.grid}) tokens{f', {a.window}x{a.window} windows' if a.window else ''}, width "
               f"{a.width}, {a.heads} heads, bf16, attention path {aot.tpu_attention_path()}"
               + (", no relative positions" if a.no_rel_pos else "")),
      ("chip", f"one of {a.topology}: {peak / 1e12:.0f} TFLOP/s, {bandwidth / 1e12:.2f} TB/s"),
      ("libtpu flags", aot.libtpu_flags() or "none (libtpu's defaults)"),
      ("compile", f"{time.perf_counter() - t0:.0f} s"),
      ("XLA FLOPs / bytes", f"{cost.get('flops', 0) / 1e9:.1f} GFLOP / {cost.get('bytes accessed', 0) / 1e9:.2f} GB"),
      ("XLA cost model", f"{cost.get('optimal_seconds', -1) * 1e3:.2f} ms"),
      ("Pallas kernels XLA cannot cost", f"{len(kernels)}: {sum(k.flops or 0 for k in kernels) / 1e9:.1f} GFLOP, "
                                         f"+{added * 1e3:.2f} ms"),
      ("estimate", (f"{seconds * 1e3:.2f} ms ({source})" + (f", {seconds * 1e3 / a.depth:.2f} ms per block"
                                                             if a.depth > 1 else "")) if seconds else "none"),
      ("model FLOPs", f"{flops / 1e9:.1f} GFLOP = {flops / peak * 1e3:.2f} ms at peak"),
      ("MFU", f"{flops / peak / seconds:.1%}" if seconds else "-"),
  ]
  width = max(len(k) for k, _ in rows)
  print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))
  return 0


if __name__ == "__main__":
  sys.exit(main())
