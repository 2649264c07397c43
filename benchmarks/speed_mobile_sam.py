"""MobileSAM image encoder (TinyViT-5M) forward at 1024, JAX vs the official mobile_sam module.

Same weights (the official module's random init with every tensor and batch-norm statistic
filled), batch 1, fp32, both in eval mode; JAX and PyTorch calls alternate (one call of each per
repeat) so that load from other jobs hits both alike; each reports its median. The max error of
the JAX output against PyTorch's is printed as a sanity check.

FLOPs are an analytic count of the model's multiply-adds (x2): every convolution (stem, MBConv,
patch merging, local convs, neck; depthwise ones at 9 multiply-adds per output), and per
attention block the qkv and proj Linear layers and the two attention matmuls over the zero-padded
windows (the official block pads the tokens before the attention, so that work is part of the
model), and the MLP on the real tokens. Batch norm, LayerNorm, GELU and softmax are not counted.
"""

from __future__ import annotations

import numpy as np

from benchmarks import timing

SIZE = 1024


def official_tiny_vit(seed: int = 0):
  """mobile_sam's TinyViT as build_sam_vit_t builds it, every tensor random, in eval mode."""
  import torch
  from mobile_sam.modeling.tiny_vit_sam import TinyViT

  from jaxris.weights.random_torch import randomize_

  torch.manual_seed(seed)
  enc = TinyViT(img_size=SIZE, in_chans=3, num_classes=1000, embed_dims=[64, 128, 160, 320], depths=[2, 2, 6, 2],
                num_heads=[2, 4, 5, 10], window_sizes=[7, 7, 14, 7], mlp_ratio=4.0, drop_rate=0.0,
                drop_path_rate=0.0, use_checkpoint=False, mbconv_expand_ratio=4.0, local_conv_size=3,
                layer_lr_decay=0.8)
  randomize_(enc, seed)
  with torch.no_grad():  # batch-norm variances must stay positive
    for name, buf in enc.named_buffers():
      if name.endswith("running_var"):
        buf.uniform_(0.5, 1.5)
  return enc.eval()  # eval() last: the official attention caches its bias table here


def analytic_flops(img_size: int = SIZE, dims=(64, 128, 160, 320), depths=(2, 2, 6, 2), heads=(2, 4, 5, 10),
                   windows=(7, 7, 14, 7), mlp_ratio: float = 4.0, expand: float = 4.0, out_chans: int = 256) -> int:
  """2 x multiply-adds of one forward (see the module docstring for what is counted)."""
  conv = lambda n, cin, cout, k=1: 2 * n * cin * cout * k * k
  dw = lambda n, c: 2 * n * c * 9
  side = -(-img_size // 2)
  flops = conv(side * side, 3, dims[0] // 2, 3)
  side = -(-side // 2)
  flops += conv(side * side, dims[0] // 2, dims[0], 3)
  for i, (c, depth) in enumerate(zip(dims, depths)):
    n = side * side
    for _ in range(depth):
      if i == 0:  # MBConv
        hidden = int(c * expand)
        flops += conv(n, c, hidden) + dw(n, hidden) + conv(n, hidden, c)
      else:
        w = windows[i]
        padded = (-(-side // w) * w) ** 2
        flops += conv(padded, c, 3 * c) + conv(padded, c, c)  # qkv, proj on the padded windows
        flops += (padded // (w * w)) * 2 * (2 * (w * w) ** 2 * c)  # q k^T and weights v, all heads
        flops += dw(n, c) + conv(n, c, int(c * mlp_ratio)) * 2  # local conv, MLP
    if i < len(dims) - 1:  # patch merging
      out = dims[i + 1]
      flops += conv(n, c, out)
      if out not in (320, 448, 576):
        side = -(-side // 2)
      flops += dw(side * side, out) + conv(side * side, out, out)
  n = side * side
  return flops + conv(n, dims[-1], out_chans) + conv(n, out_chans, out_chans, 3)


def cases(args) -> list[dict]:
  import jax
  import jax.numpy as jnp
  import torch
  from flax import nnx

  from jaxris.models.sam.tiny_vit import TinyViT
  from jaxris.weights import sam as sam_weights
  from jaxris.weights import store, tiny_vit
  from jaxris.weights.mapping import convert

  official = official_tiny_vit()
  prefix = "image_encoder."
  sd = {prefix + k: v.numpy() for k, v in official.state_dict().items()}
  cfg = sam_weights.infer_config(sd)
  shapes = {k: s for k, s in store.param_shapes(sam_weights.abstract_model(cfg)).items() if k.startswith(prefix)}
  params = convert(sd, sam_weights.RULES, shapes, ignore=tiny_vit.IGNORE, what="TinyViT state_dict")
  encoder = nnx.eval_shape(lambda: TinyViT(cfg.encoder, rngs=nnx.Rngs(0)))
  store.assign_params(encoder, {k[len(prefix):]: np.asarray(v) for k, v in dict(params).items()})
  graphdef, state = nnx.split(encoder)
  fwd = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))
  x_t = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
  x_j = jnp.asarray(x_t.permute(0, 2, 3, 1).numpy())
  compiled = fwd.lower(state, x_j).compile()
  run_jax = lambda: compiled(state, x_j).block_until_ready()

  def run_ref():
    with torch.no_grad():
      return official(x_t)

  ours = np.asarray(compiled(state, x_j)).transpose(0, 3, 1, 2)
  ref = run_ref().numpy()
  err = np.abs(ours - ref).max() / np.abs(ref).max()

  run_jax(), run_ref()  # warm-up
  jax_t, ref_t = [], []
  for _ in range(args.repeats):  # interleaved, one call each per round
    jax_t.append(timing.median_seconds(run_jax, repeats=1, warmup=0))
    ref_t.append(timing.median_seconds(run_ref, repeats=1, warmup=0))
  flops = analytic_flops()
  print(f"# mobile_sam TinyViT {SIZE}: analytic {flops / 1e9:.1f} GFLOP; max |JAX - PyTorch| = {err:.1e} of the "
        f"output scale; JAX times {', '.join(f'{t:.2f}' for t in jax_t)} s; PyTorch ({torch.get_num_threads()} "
        f"threads) {', '.join(f'{t:.2f}' for t in ref_t)} s", flush=True)
  return [dict(case=f"mobile_sam TinyViT encoder {SIZE}x{SIZE}", jax_s=float(np.median(jax_t)),
               ref_s=float(np.median(ref_t)), flops=flops)]
