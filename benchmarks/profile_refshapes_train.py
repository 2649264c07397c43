"""Where README command 1's train step spends its op time, by kind of XLA op, and how fast this CPU runs
the step's own matmul shapes alone.

  python benchmarks/profile_refshapes_train.py                     # 5 traced steps + the matmul shapes
  python benchmarks/profile_refshapes_train.py --steps 10 --top 15 --set model.dtype=bfloat16

Part 1 traces ``--steps`` update steps (after compiling and two warm-up steps) with ``jax.profiler``
and sums the duration of every XLA op the trace records (one event per executed HLO instruction of
the compiled step), grouped by what that instruction computes in the compiled HLO:

  matmul / convolution   a dot or convolution (on CPU: the library call and whatever XLA fused into it)
  erf (exact GELU)       an elementwise fusion computing erf / erfc (the ViT's and decoder's GELU)
  copy / transpose       a layout change: copy, transpose, or a fusion whose result is one
  reduction              a reduce (layer norms, softmax, losses, gradients of broadcasts)
  other                  the rest: elementwise, broadcast, select, slicing, concatenation, ...

Shares are of the summed op time; ops can overlap on the CPU's threads, so the sum may exceed the wall
time of the steps (printed too). Part 2 times the dot shapes of the compiled step that carry the most
FLOPs, each alone (a jitted fp32 ``lhs @ rhs`` of the same sizes, batch dimensions included), and
prints their GFLOP/s next to this machine's 4096^3 matmul peak (benchmarks/timing.py).
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import math
import os
import re
import sys
import tempfile
import time

KINDS = ("matmul / convolution", "erf (exact GELU)", "copy / transpose", "reduction", "other")

# `%name = f32[2,3]{1,0} opcode(...)` (tuple results start with a parenthesis).
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*(.+?)\s+([\w\-]+)\(")
_COMPUTATION = re.compile(r"^\s*(?:ENTRY\s+)?%([\w.\-]+)\s*\(")
_CALLS = re.compile(r"(?:calls|to_apply|body|condition)=%([\w.\-]+)")


def parse_hlo(text: str) -> tuple[dict, dict]:
  """Compiled HLO text -> (instructions: name -> (opcode, result type, called computations, line),
  computations: name -> [instruction names])."""
  instructions, computations, current = {}, {}, None
  for line in text.splitlines():
    m = _INSTRUCTION.match(line)
    if m:
      name, result, opcode = m.groups()
      instructions[name] = (opcode, result, _CALLS.findall(line), line)
      computations.setdefault(current, []).append(name)
      continue
    m = _COMPUTATION.match(line)
    if m and line.rstrip().endswith("{"):
      current = m.group(1)
  return instructions, computations


def kind_of(name: str, instructions: dict, computations: dict) -> str:
  """The KINDS entry of one executed instruction, from its own opcode and those it fuses."""
  opcode, _, calls, _ = instructions[name]
  inner, stack = [], list(calls)
  while stack:
    for sub in computations.get(stack.pop(), []):
      inner.append(instructions[sub])
      stack.extend(instructions[sub][2])
  opcodes = {opcode} | {i[0] for i in inner}
  if opcodes & {"dot", "convolution"} or opcode == "custom-call":
    return KINDS[0]
  if opcodes & {"erf", "erfc"} or any('op_name="' in i[3] and "/erf" in i[3] for i in inner):
    return KINDS[1]
  root = next((i for i in inner if i[3].lstrip().startswith("ROOT ")), None)
  if opcode in ("copy", "transpose") or (root is not None and root[0] in ("copy", "transpose")):
    return KINDS[2]
  if "reduce" in opcodes or "reduce-window" in opcodes:
    return KINDS[3]
  return KINDS[4]


def op_seconds(trace_dir: str, instructions: dict) -> collections.Counter:
  """Seconds per HLO instruction name, summed over the op events of the perfetto trace."""
  path = sorted(glob.glob(os.path.join(trace_dir, "**", "*.json.gz"), recursive=True))[-1]
  with gzip.open(path) as f:
    trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  seconds = collections.Counter()
  for e in events:
    if e.get("ph") == "X" and e.get("name") in instructions:
      seconds[e["name"]] += e["dur"] * 1e-6
  return seconds


def dot_shapes(instructions: dict) -> collections.Counter:
  """(batch, m, k, n) of every dot of the compiled step -> how many there are."""
  dims = lambda result: [int(d) for d in re.match(r"\w+\[([\d,]*)\]", result).group(1).split(",") if d]
  field = lambda line, key: [int(d) for d in (re.search(key + r"=\{([\d,]*)\}", line) or [None, ""])[1].split(",") if d]
  shapes = collections.Counter()
  for opcode, _, _, line in instructions.values():
    if opcode != "dot":
      continue
    lhs_name, rhs_name = re.findall(r"%([\w.\-]+)", line.split(" dot(", 1)[1])[:2]
    lhs, rhs = dims(instructions[lhs_name][1]), dims(instructions[rhs_name][1])
    lb, lc = field(line, "lhs_batch_dims"), field(line, "lhs_contracting_dims")
    rb, rc = field(line, "rhs_batch_dims"), field(line, "rhs_contracting_dims")
    batch = math.prod(lhs[d] for d in lb)
    k = math.prod(lhs[d] for d in lc)
    m = math.prod(lhs[d] for d in range(len(lhs)) if d not in lb + lc)
    n = math.prod(rhs[d] for d in range(len(rhs)) if d not in rb + rc)
    shapes[(batch, m, k, n)] += 1
  return shapes


def time_dot(batch: int, m: int, k: int, n: int, repeats: int = 10) -> float:
  """Seconds of one jitted fp32 batched matmul of these sizes (median)."""
  import jax
  import jax.numpy as jnp

  from benchmarks import timing
  a = jax.random.normal(jax.random.key(0), (batch, m, k), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (batch, k, n), jnp.float32)
  f = jax.jit(lambda x, y: x @ y)
  return timing.median_seconds(lambda: f(a, b).block_until_ready(), repeats, warmup=2)


def main(argv=None) -> int:
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this tree's jaxris
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default="configs/ldit_vitb.py:refshapes", help="recipe[:arg] (README command 1's)")
  p.add_argument("--steps", type=int, default=5, help="traced update steps")
  p.add_argument("--top", type=int, default=10, help="rows of the single-op and the dot-shape tables")
  p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                 help="override a recipe field, as jaxris.train's --config.FIELD=VALUE (repeatable)")
  p.add_argument("--no-matmuls", action="store_true", help="skip part 2 (the dot shapes timed alone)")
  args = p.parse_args(argv)

  import jax

  from benchmarks import timing
  from benchmarks.speed_refshapes_train import setup

  run = setup(args.config, dict(item.split("=", 1) for item in args.set))
  cfg, trainer = run["cfg"], run["trainer"]
  batches = [run["to_device"](b) for b, _ in zip(run["host_batches"], range(4))]
  hlo = trainer.step.lower(trainer.state, batches[0]).compile().as_text()
  instructions, computations = parse_hlo(hlo)
  state = trainer.state
  for b in batches[:2]:  # compile + warm up
    state, m = trainer.step(state, b)
  jax.block_until_ready(m)
  trace_dir = tempfile.mkdtemp(prefix="jaxris-profile-")
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    t0 = time.perf_counter()
    for i in range(args.steps):
      state, m = trainer.step(state, batches[i % len(batches)])
    jax.block_until_ready(m)
    wall = time.perf_counter() - t0
  seconds = op_seconds(trace_dir, instructions)
  if not seconds:
    print("profile: the trace holds no XLA op events (is this jax's CPU backend?)", file=sys.stderr)
    return 1
  by_kind = collections.Counter()
  for name, s in seconds.items():
    by_kind[kind_of(name, instructions, computations)] += s
  total = sum(by_kind.values())
  print(f"\n{args.config}: {args.steps} traced steps of batch {cfg.batch_size}: wall {wall / args.steps * 1e3:.0f} ms "
        f"per step ({args.steps * cfg.batch_size / wall:.1f} images/s under the profiler), summed op time "
        f"{total / args.steps * 1e3:.0f} ms per step")
  timing.print_table(["kind of op", "ms per step", "share of op time"],
                     [[k, by_kind[k] / args.steps * 1e3, f"{by_kind[k] / total:.0%}"] for k in KINDS])
  print(f"\nthe {args.top} single ops with the most time:")
  timing.print_table(["op", "kind", "ms per step", "share"],
                     [[name, kind_of(name, instructions, computations), s / args.steps * 1e3, f"{s / total:.1%}"]
                      for name, s in seconds.most_common(args.top)])

  if not args.no_matmuls:
    shapes = dot_shapes(instructions)
    flops = {shape: 2 * math.prod(shape) * count for shape, count in shapes.items()}
    ranked = sorted(shapes, key=lambda shape: -flops[shape])
    rows = [[f"{b} x {m_}x{k} @ {k}x{n}", shapes[(b, m_, k, n)], f"{flops[(b, m_, k, n)] / sum(flops.values()):.0%}",
             2 * b * m_ * k * n / time_dot(b, m_, k, n) / 1e9] for b, m_, k, n in ranked[:args.top]]
    print(f"\nthe step's {sum(shapes.values())} dots come in {len(shapes)} shapes; the {len(rows)} with the most "
          f"FLOPs, each timed alone (fp32), against this machine's 4096^3 matmul peak of "
          f"{timing.jax_matmul_peak_gflops():.0f} GFLOP/s:")
    timing.print_table(["batch x (m x k @ k x n)", "dots in the step", "share of dot FLOPs", "GFLOP/s alone"], rows)
  return 0


if __name__ == "__main__":
  sys.exit(main())
