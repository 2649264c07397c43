"""L-DIT ViT-B train step at 512 px (DIT's training setting), JAX vs a PyTorch reference, batch 2.

  python benchmarks/speed.py --only ldit_train
  python benchmarks/speed_ldit_train.py --memory                         # the memory table only
  python benchmarks/speed_ldit_train.py --memory-run --batch 8 --remat   # one subprocess of the memory table

The JAX step is jaxris.train's own update step (``create_trainer``: forward, BCE, backward,
clip 0.15, Adam with the official betas, EMA 0.9997, state donated) on SAM ViT-B + BERT-base
with random weights, nothing frozen, dropout on, as the official training runs. The PyTorch
step is the reference of the official ``Net`` in tests/dit_reference.py (written from
wysnzzzz/DIT's forward) with the same loss, clip, Adam and EMA. Steps alternate (one of each
per round) so that load from other jobs hits both alike.

Model FLOPs are an analytic count, 2 x multiply-adds of one forward, times 3 for forward +
backward: the ViT on 20 text slots + 32x32 patches (projections, MLPs, both attention matmuls,
the per-block text projection), the patch embedding and the neck, BERT up to the layer DIT
reads (its first) and text_proj. The mask decoder (< 1% of the total) is not counted.

Memory: XLA's buffer assignment for the compiled step (arguments + outputs - donated aliases +
temporaries: the peak the step needs) for batch 2 and 8, with and without rematerialising the
ViT blocks, and the measured peak resident memory (ru_maxrss) of a fresh process that builds
the model and trains two steps at batch 8 with rematerialisation.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import timing  # noqa: E402

SIZE, SLOTS, TEXT = 512, 20, 20
GIB = 1024**3


def analytic_flops(batch: int, width: int = 768, depth: int = 12, mlp: int = 3072, text_width: int = 768,
                   bert_layers: int = 1, bert_mlp: int = 3072, patch: int = 16, neck: int = 256) -> int:
  """2 x multiply-adds of forward + backward (3x the forward; see the module docstring)."""
  grid = SIZE // patch
  n = SLOTS + grid * grid
  per_block = 2 * n * width * (4 * width + 2 * mlp)          # qkv, proj, mlp in + out
  per_block += 2 * 2 * n * n * width                         # q k^T and weights v
  per_block += 2 * SLOTS * width * width                     # probs[i]
  vit = depth * per_block + 2 * grid * grid * width * 3 * patch * patch
  vit += 2 * grid * grid * (width * neck + neck * neck * 9)  # neck 1x1 and 3x3 convs
  bert = bert_layers * (2 * TEXT * text_width * (4 * text_width + 2 * bert_mlp) + 2 * 2 * TEXT * TEXT * text_width)
  bert += 2 * TEXT * text_width * neck                       # text_proj
  return 3 * batch * (vit + bert)


def _jax_trainer(batch: int, remat: bool):
  import jax.numpy as jnp
  from flax import nnx

  from jaxris.configs import ldit_vitb
  from jaxris.models.bert import BertConfig
  from jaxris.models.functional import split_params
  from jaxris.models.ris.dit_sam import RisConfig, RisSam
  from jaxris.models.sam.sam import sam_config
  from jaxris.sharding import global_batch, make_mesh
  from jaxris.train import create_trainer

  cfg = ldit_vitb.get_config()  # the recipe's optimiser, EMA and loss
  cfg.batch_size = batch
  model = RisSam(RisConfig(scheme="ldit", sam=sam_config("vit_b"), bert=BertConfig(), remat=remat), rngs=nnx.Rngs(0))
  graphdef, params, rest = split_params(model)
  mesh = make_mesh((1, 1, 1))
  trainer = create_trainer(cfg, graphdef, params, rest, mesh, steps_per_epoch=1000, total_steps=40000)
  rng = np.random.default_rng(0)
  host = {"image": rng.standard_normal((batch, SIZE, SIZE, 3), np.float32),
          "mask": (rng.random((batch, SIZE, SIZE)) > 0.7).astype(np.float32),
          "input_ids": rng.integers(1000, 30000, (batch, TEXT)).astype(np.int32),
          "attention_mask": np.ones((batch, TEXT), np.int32)}
  return trainer, global_batch(host, mesh), jnp


def _memory_gib(trainer, batch) -> float:
  """XLA's planned peak of the compiled step: arguments + outputs - donated aliases + temporaries."""
  m = trainer.step.lower(trainer.state, batch).compile().memory_analysis()
  return (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes) / GIB


def _torch_step(batch: int):
  import torch
  from transformers import BertConfig

  sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
  from dit_reference import DitNet

  torch.manual_seed(0)
  net = DitNet("ldit", embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11), img_size=1024,
               bert_config=BertConfig()).train()
  params = [p for p in net.parameters() if p.requires_grad]
  opt = torch.optim.Adam(params, lr=1e-4, betas=(0.9, 0.98), eps=1e-9)
  ema = [p.detach().clone() for p in params]
  g = torch.Generator().manual_seed(0)
  images = torch.randn(batch, 3, SIZE, SIZE, generator=g)
  masks = (torch.rand(batch, SIZE, SIZE, generator=g) > 0.7).float()
  ids = torch.randint(1000, 30000, (batch, TEXT), generator=g)
  attention = torch.ones(batch, TEXT, dtype=torch.int64)

  def step():
    loss = torch.nn.functional.binary_cross_entropy_with_logits(net(images, ids, attention), masks)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 0.15)
    opt.step()
    with torch.no_grad():  # the official EMA, past its warm-up
      for e, p in zip(ema, params):
        e.mul_(0.9997).add_(p, alpha=0.0003)
    return float(loss)
  return step


def _time_steps(repeats: int, batch: int):
  """Alternating JAX / PyTorch train steps -> (JAX seconds, PyTorch seconds) per round."""
  import jax

  trainer, data, _ = _jax_trainer(batch, remat=False)
  state = {"s": trainer.state}

  def run_jax():
    state["s"], metrics = trainer.step(state["s"], data)
    jax.block_until_ready(metrics["loss"])

  run_ref = _torch_step(batch)
  run_jax(), run_ref()  # compile / warm up
  jax_t, ref_t = [], []
  for _ in range(repeats):
    jax_t.append(timing.median_seconds(run_jax, repeats=1, warmup=0))
    ref_t.append(timing.median_seconds(run_ref, repeats=1, warmup=0))
  return jax_t, ref_t


def cases(args) -> list[dict]:
  import gc

  import torch

  batch = 2
  jax_t, ref_t = _time_steps(args.repeats, batch)
  gc.collect()  # both models and their optimizer states go before the memory table's fresh process
  flops = analytic_flops(batch)
  jax_s, ref_s = float(np.median(jax_t)), float(np.median(ref_t))
  print(f"# L-DIT ViT-B train step, batch {batch} at {SIZE}: analytic {flops / 1e12:.2f} TFLOP; JAX "
        f"{', '.join(f'{t:.1f}' for t in jax_t)} s = {batch / jax_s:.2f} img/s; PyTorch ({torch.get_num_threads()} "
        f"threads) {', '.join(f'{t:.1f}' for t in ref_t)} s = {batch / ref_s:.2f} img/s", flush=True)
  print_memory()
  return [dict(case=f"L-DIT ViT-B train step {SIZE}px batch {batch}", jax_s=jax_s, ref_s=ref_s, flops=flops)]


def print_memory() -> None:
  """XLA's planned peak per configuration, then the measured peak RSS of a fresh batch-8 process."""
  rows = []
  for batch in (2, 8):
    for remat in (False, True):
      trainer, data, _ = _jax_trainer(batch, remat)
      rows.append([f"batch {batch}" + (", remat" if remat else ""), _memory_gib(trainer, data)])
      del trainer, data
  print("# XLA-planned peak of the compiled L-DIT ViT-B train step (GiB)")
  timing.print_table(["L-DIT ViT-B train step at 512", "XLA-planned peak GiB"], rows)
  run = subprocess.run([sys.executable, os.path.abspath(__file__), "--memory-run", "--batch", "8", "--remat"],
                       capture_output=True, text=True)
  lines = run.stdout.strip().splitlines()
  print(f"# measured: {lines[-1]}" if run.returncode == 0 and lines else
        f"# measured: the batch-8 remat process failed (exit {run.returncode}): {run.stderr.strip()[-300:]}")
  print(flush=True)


def _memory_run(batch: int, remat: bool) -> None:
  """Builds the model, trains two steps, prints the process's peak resident memory."""
  import jax
  trainer, data, _ = _jax_trainer(batch, remat)
  state = trainer.state
  for _ in range(2):
    state, metrics = trainer.step(state, data)
  loss = float(jax.device_get(metrics["loss"]))
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB  # Linux reports KiB
  print(f"batch {batch}{' with remat' if remat else ''}: peak RSS {peak:.1f} GiB over 2 train steps (loss {loss:.3f})")


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--memory-run", action="store_true", help="train 2 steps and print the peak RSS")
  parser.add_argument("--memory", action="store_true", help="print the memory table only")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--remat", action="store_true")
  a = parser.parse_args()
  if a.memory_run:
    _memory_run(a.batch, a.remat)
  elif a.memory:
    print_memory()
  else:
    parser.print_help()
