"""Speed benchmarks: JAX vs the official PyTorch code, same weights, same process, same run.

  python benchmarks/speed.py                 # every case
  python benchmarks/speed.py --only sam      # one group (sam, bert, ...)

Each group lives in benchmarks/speed_<group>.py and exposes ``cases(args) -> list[dict]`` with
keys ``case``, ``jax_s``, ``ref_s`` (median seconds) and ``flops`` (model FLOPs of one call,
or None). The table shows the JAX/PyTorch time ratio measured in this run and the achieved
GFLOP/s against this machine's measured fp32 matmul peak (one jitted 4096^3 matmul).
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import timing  # noqa: E402

GROUPS = ["sam", "mobile_sam", "bert", "beit3", "evf", "ldit_train"]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--only", nargs="*", default=GROUPS, choices=GROUPS, help="groups to run")
  parser.add_argument("--repeats", type=int, default=5, help="timed calls per case (median reported)")
  args = parser.parse_args()

  import jax
  import torch

  peak = timing.jax_matmul_peak_gflops()
  torch_peak = timing.torch_matmul_peak_gflops()
  print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__} "
        f"({jax.devices()[0].platform}), torch {torch.__version__} ({torch.get_num_threads()} threads)")
  print(f"# fp32 matmul 4096^3: XLA {peak:.0f} GFLOP/s, PyTorch {torch_peak:.0f} GFLOP/s\n")
  rows = []
  for group in args.only:
    module = importlib.import_module(f"benchmarks.speed_{group}")
    for r in module.cases(args):
      gflops = r["flops"] / r["jax_s"] / 1e9 if r.get("flops") else None
      rows.append([r["case"], r["jax_s"] * 1e3, r["ref_s"] * 1e3, r["jax_s"] / r["ref_s"],
                   gflops if gflops else "-", f"{100 * gflops / peak:.0f}%" if gflops else "-"])
  timing.print_table(["case", "JAX ms", "PyTorch ms", "JAX/PyTorch", "JAX GFLOP/s", "of XLA matmul peak"], rows)


if __name__ == "__main__":
  main()
