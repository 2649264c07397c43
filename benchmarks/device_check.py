"""On one accelerator: jaxris against the official PyTorch code, same GPU, same run (issue 10 part 5).

  python benchmarks/device_check.py                 # full size (what benchmarks/device_check.sh runs)
  python benchmarks/device_check.py --smoke         # tiny sizes, any machine (CPU too): checks the script

Rows:
  1. L-DIT ViT-B at 512 px, bf16 train step (jaxris.train's update step from create_trainer: forward,
     BCE, backward, clip, Adam, EMA; BERT-base, nothing frozen, dropout on) against a PyTorch train
     step of tests/dit_reference.py's official Net (the same loss, clip, Adam, EMA) under
     torch.autocast(bfloat16), fp32 master weights on both sides. Images/s and MFU from the
     analytic FLOPs (3x the forward's 2 x multiply-adds; benchmarks/speed_ldit_train.py's count).
     JAX runs on the attention path ``auto`` picks (XLA's fused attention); with ``--cudnn`` a
     second JAX row forces cuDNN's flash attention (JAXRIS_ATTENTION=cudnn).
  2. SAM ViT-H image encoder forward at 1024 px (segment_anything's ImageEncoderViT, random
     weights converted), bf16 compute on both sides (torch.autocast), images/s and MFU.

Calls alternate between JAX and PyTorch (one of each per round) and each reports its median.
Prints one markdown table with the JAX/PyTorch time ratios. Peak FLOP/s per device kind are the
vendors' dense bf16 figures; on an unknown kind (or the CPU) the MFU column says n/a.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from functools import partial

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))  # dit_reference.py: the official DIT forward in PyTorch

PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12, "L40S": 362e12,
             "B200": 2250e12}
TEXT, SLOTS = 20, 20


def peak_flops(kind: str) -> float | None:
  return next((v for k, v in PEAK_BF16.items() if k.lower() in kind.lower()), None)


def median_s(fn, n: int) -> list[float]:
  out = []
  for _ in range(n):
    t0 = time.perf_counter()
    fn()
    out.append(time.perf_counter() - t0)
  return out


def vit_flops(size, width, depth, heads, mlp_ratio=4, patch=16, slots=0, windowed=None, window=14, neck=256):
  """2 x multiply-adds of one ViT forward (patch embedding, blocks, neck); windowed: the indexes
  of the global blocks when the others attend in windows (SAM), None when every block is global (DIT)."""
  g = size // patch
  mlp = int(width * mlp_ratio)
  flops = 2 * g * g * 3 * patch * patch * width + 2 * g * g * (width * neck + 9 * neck * neck)
  for i in range(depth):
    if windowed is None or i in windowed:
      n, seqs, keys = g * g + slots, 1, g * g + slots
    else:
      nw = -(-g // window)
      n, seqs, keys = window * window, nw * nw, window * window
    tokens = n * seqs
    flops += 2 * tokens * width * (4 * width + 2 * mlp) + 4 * tokens * keys * width
    flops += 4 * tokens * (g if windowed is None or i in windowed else window) * width  # rel-pos terms
  return flops


def ldit_flops(batch, size, width, depth, heads, bert_width=768, bert_mlp=3072):
  vit = vit_flops(size, width, depth, heads, slots=SLOTS) + depth * 2 * SLOTS * width * bert_width
  bert = 2 * TEXT * bert_width * (4 * bert_width + 2 * bert_mlp) + 4 * TEXT * TEXT * bert_width
  return 3 * batch * (vit + bert + 2 * TEXT * bert_width * 256)


# --- L-DIT train step.

def jax_ldit_step(a, path: str | None):
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from jaxris.configs.ldit_vitb import get_config
  from jaxris.models.bert import BertConfig
  from jaxris.models.functional import split_params
  from jaxris.models.ris.dit_sam import RisConfig, RisSam
  from jaxris.models.sam.image_encoder import ImageEncoderConfig
  from jaxris.models.sam.sam import sam_config
  from jaxris.ops import attention
  from jaxris.sharding import global_batch, make_mesh
  from jaxris.train import create_trainer

  cfg = get_config()  # the L-DIT ViT-B recipe: its optimizer, clip, EMA and loss
  cfg.batch_size, cfg.model.dtype, cfg.model.remat = a.batch, "bfloat16", a.remat
  sam = sam_config("vit_b")
  if a.smoke:
    import dataclasses
    sam = dataclasses.replace(sam, encoder=ImageEncoderConfig(img_size=2 * a.size, embed_dim=a.width, depth=a.depth,
                                                              num_heads=a.heads, global_attn_indexes=(1,)))
  bert = BertConfig() if not a.smoke else BertConfig(hidden_size=96, num_hidden_layers=2, num_attention_heads=4,
                                                     intermediate_size=200)
  model = RisSam(RisConfig(scheme="ldit", sam=sam, bert=bert, remat=a.remat), rngs=nnx.Rngs(0), dtype=jnp.bfloat16)
  graphdef, params, rest = split_params(model)
  mesh = make_mesh((1, 1, 1))
  trainer = create_trainer(cfg, graphdef, params, rest, mesh, steps_per_epoch=1000, total_steps=40000)
  rng = np.random.default_rng(0)
  s = a.size
  host = {"image": rng.standard_normal((a.batch, s, s, 3), np.float32),
          "mask": (rng.random((a.batch, s, s)) > 0.7).astype(np.float32),
          "input_ids": rng.integers(1, 300, (a.batch, TEXT)).astype(np.int32),
          "attention_mask": np.ones((a.batch, TEXT), np.int32)}
  data = global_batch(host, mesh)
  state = {"s": trainer.state}
  with attention.use(path or "auto"):
    compiled = trainer.step.lower(state["s"], data).compile()

  def run():
    state["s"], metrics = compiled(state["s"], data)
    jax.block_until_ready(metrics["loss"])
  return run


def torch_ldit_step(a, device):
  import torch
  from transformers import BertConfig

  from dit_reference import DitNet

  torch.manual_seed(0)
  if a.smoke:
    net = DitNet("ldit", embed_dim=a.width, depth=a.depth, num_heads=a.heads, global_attn_indexes=(1,),
                 img_size=2 * a.size, bert_config=BertConfig(hidden_size=96, num_hidden_layers=2, num_attention_heads=4,
                                                             intermediate_size=200))
  else:  # SAM ViT-B shapes (1024 px tables, resized at run time as DIT does at 512) + BERT-base
    net = DitNet("ldit", embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11), img_size=1024,
                 bert_config=BertConfig())
  net = net.to(device).train()
  params = [p for p in net.parameters() if p.requires_grad]
  opt = torch.optim.Adam(params, lr=1e-4, betas=(0.9, 0.98), eps=1e-9)
  ema = [p.detach().clone() for p in params]
  g = torch.Generator().manual_seed(0)
  images = torch.randn(a.batch, 3, a.size, a.size, generator=g).to(device)
  masks = (torch.rand(a.batch, a.size, a.size, generator=g) > 0.7).float().to(device)
  ids = torch.randint(1, 300, (a.batch, TEXT), generator=g).to(device)
  attn = torch.ones(a.batch, TEXT, dtype=torch.int64, device=device)

  def run():
    with torch.autocast(device.type, dtype=torch.bfloat16):
      logits = net(images, ids, attn)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), masks)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 0.15)
    opt.step()
    with torch.no_grad():
      torch._foreach_mul_(ema, 0.9997)
      torch._foreach_add_(ema, params, alpha=0.0003)
    loss.detach().item()  # waits for the device
  return run


# --- SAM ViT-H encoder forward.

def sam_vit_h(a, device):
  import jax
  import jax.numpy as jnp
  import torch
  from flax import nnx
  from segment_anything.modeling import ImageEncoderViT

  from jaxris.weights.sam import encoder_from_torch

  w, d, h, glob = (a.width, a.depth, a.heads, (1,)) if a.smoke else (1280, 32, 16, (7, 15, 23, 31))
  size = 2 * a.size if a.smoke else 1024
  torch.manual_seed(0)
  official = ImageEncoderViT(img_size=size, embed_dim=w, depth=d, num_heads=h, mlp_ratio=4, qkv_bias=True,
                             use_rel_pos=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), window_size=14,
                             out_chans=256, global_attn_indexes=list(glob))
  with torch.no_grad():
    for name, p in official.named_parameters():
      if "pos" in name:
        p.normal_(0.0, 0.02)
  official = official.eval()
  encoder = encoder_from_torch(official.state_dict(), dtype=jnp.bfloat16)
  official = official.to(device)
  graphdef, state = nnx.split(encoder)
  x_t = torch.randn(a.sam_batch, 3, size, size, generator=torch.Generator().manual_seed(0))
  x_j = jnp.asarray(x_t.permute(0, 2, 3, 1).numpy())
  x_t = x_t.to(device)
  compiled = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x)).lower(state, x_j).compile()

  def run_jax():
    return compiled(state, x_j).block_until_ready()

  def run_ref():
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
      out = official(x_t)
    return out.float().cpu()

  ours = np.asarray(run_jax(), np.float32).transpose(0, 3, 1, 2)
  ref = run_ref().numpy()
  err = float(np.abs(ours - ref).max() / np.abs(ref).max())
  flops = a.sam_batch * vit_flops(size, w, d, h, windowed=glob)
  return run_jax, run_ref, flops, err, size


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--smoke", action="store_true", help="tiny models at 64/128 px: checks the script on any machine")
  p.add_argument("--batch", type=int, default=None, help="L-DIT train batch (default 32; smoke 2)")
  p.add_argument("--sam-batch", type=int, default=None, help="SAM ViT-H forward batch (default 8; smoke 1)")
  p.add_argument("--repeats", type=int, default=None, help="timed rounds per row (default 10; smoke 2)")
  p.add_argument("--remat", action="store_true", help="rematerialise the ViT blocks of the train step")
  p.add_argument("--cudnn", action="store_true", help="also time the train step on cuDNN flash attention")
  a = p.parse_args()
  a.batch = a.batch or (2 if a.smoke else 32)
  a.sam_batch = a.sam_batch or (1 if a.smoke else 8)
  a.repeats = a.repeats or (2 if a.smoke else 10)
  a.size, a.width, a.depth, a.heads = (64, 64, 2, 2) if a.smoke else (512, 768, 12, 12)

  import jax
  import torch

  dev = jax.devices()[0]
  kind = dev.device_kind
  peak = peak_flops(kind)
  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  from jaxris.ops import attention
  print(f"# jax {jax.__version__} on {dev.platform} ({kind}, attention path {attention.path()}); torch "
        f"{torch.__version__} on {device}" + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else "")
        + ("; SMOKE sizes" if a.smoke else ""), flush=True)

  rows = []

  def measure(name, run_jax, run_ref, flops, images, note=""):
    run_jax(), run_ref(), run_jax(), run_ref()  # compile / warm up
    jt, rt = [], []
    for _ in range(a.repeats):
      jt += median_s(run_jax, 1)
      rt += median_s(run_ref, 1)
    js, rs = statistics.median(jt), statistics.median(rt)
    mfu = lambda s: "n/a" if peak is None else f"{100 * flops / s / peak:.1f}%"
    rows.append([name, f"{js * 1e3:.1f}", f"{rs * 1e3:.1f}", f"{js / rs:.2f}", f"{images / js:.1f}",
                 f"{images / rs:.1f}", mfu(js), mfu(rs), note])
    print(f"# {name}: JAX {js * 1e3:.1f} ms, PyTorch {rs * 1e3:.1f} ms {note}", flush=True)

  size_note = f"{a.size}px batch {a.batch}"
  ref_step = torch_ldit_step(a, device)
  flops = ldit_flops(a.batch, a.size, a.width, a.depth, a.heads,
                     *((96, 200) if a.smoke else (768, 3072)))
  measure(f"L-DIT ViT-B train step bf16, {size_note}", jax_ldit_step(a, None), ref_step, flops, a.batch,
          "(remat)" if a.remat else "")
  if a.cudnn:
    measure(f"L-DIT ViT-B train step bf16, {size_note}, cuDNN attention", jax_ldit_step(a, "cudnn"), ref_step,
            flops, a.batch)
  del ref_step
  run_jax, run_ref, flops, err, size = sam_vit_h(a, device)
  measure(f"SAM ViT-H encoder forward bf16, {size}px batch {a.sam_batch}", run_jax, run_ref, flops, a.sam_batch,
          f"(max |JAX - PyTorch| {err:.1e} of scale)")

  head = ["case", "JAX ms", "PyTorch ms", "JAX/PyTorch time", "JAX img/s", "PyTorch img/s", "JAX MFU",
          "PyTorch MFU", "note"]
  print("\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
  for r in rows:
    print("| " + " | ".join(r) + " |")
  print(f"\nMFU against {kind}'s dense bf16 peak ({'n/a' if peak is None else f'{peak / 1e12:.0f} TFLOP/s'}), "
        "analytic FLOPs; same device, same run, calls alternating.")
  return 0


if __name__ == "__main__":
  sys.exit(main())
