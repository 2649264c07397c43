"""Shared timing helpers for the benchmarks: median wall time and the machine's matmul peak."""

from __future__ import annotations

import statistics
import time
from typing import Callable


def median_seconds(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
  """Median wall time of `fn()`; `fn` must block until its result is ready."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def jax_matmul_peak_gflops(n: int = 4096, repeats: int = 5) -> float:
  """Achieved GFLOP/s of one jitted n^3 fp32 matmul: this machine's practical peak for XLA."""
  import jax
  import jax.numpy as jnp

  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  f = jax.jit(lambda x, y: x @ y)
  t = median_seconds(lambda: f(a, b).block_until_ready(), repeats)
  return 2 * n**3 / t / 1e9


def torch_matmul_peak_gflops(n: int = 4096, repeats: int = 5) -> float:
  import torch

  a, b = torch.randn(n, n), torch.randn(n, n)
  with torch.no_grad():
    t = median_seconds(lambda: a @ b, repeats)
  return 2 * n**3 / t / 1e9


def print_table(headers: list[str], rows: list[list[object]]) -> None:
  """Prints a GitHub-markdown table (pasted into README as is)."""
  cells = [[str(h) for h in headers]] + [[c if isinstance(c, str) else f"{c:.3g}" for c in r] for r in rows]
  widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
  line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
  print(line(cells[0]))
  print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
  for r in cells[1:]:
    print(line(r))
