"""What fits where: the full-size recipes' train steps compiled for TPU pods (python -m jaxris.aot).

  python benchmarks/pod_plan.py                    # every row, one compile at a time
  python benchmarks/pod_plan.py --only 0 --only 2  # some rows
  python benchmarks/pod_plan.py --results plan.json  # keep/merge results (rows already there are skipped)

Each row is one `python -m jaxris.aot` command (printed with the table, so any row can be rerun
alone), some with an environment variable before it: the last two rows set
LIBTPU_INIT_ARGS=--xla_msa_enable=false (memory-space assignment off; README, session 16). The
figures are XLA's compiler estimates for the TPU (memory_analysis, cost_analysis and, where the cost
model gives none, the roofline of XLA's FLOPs and bytes), not measured runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# libtpu with memory-space assignment off: XLA's TPU cost model charges MSA's asynchronous prefetches
# into on-chip memory as step time, and they are what kept the ViT-H row from following its blocks'
# gain in session 15 (README, session 16). The rows with it show the estimate without them; a real TPU
# may well disagree (MSA is XLA's default there), which no one has measured.
MSA_OFF = {"LIBTPU_INIT_ARGS": "--xla_msa_enable=false"}

# (what, recipe, topology, mesh, overrides, environment): the mesh, dtype and remat chosen to fit. Pods by Cloud
# TPU's names: v5e-N has N chips; v4-N and v5p-N count TensorCores, two per chip (v5p-128 = 64
# chips, 4x4x4; v4-512 = 256 chips, 4x8x8).
# Remat only where the activations would not fit: 16 images per v5e chip (16 GiB) need it; 4 per
# chip, or 16 per v5p chip (95 GiB), do not, and skipping it saves a quarter of the FLOPs.
ROWS = [
    ("L-DIT ViT-B 512, batch 1024", "configs/ldit_vitb.py", "v5e:8x8", "(16,4,1)",
     ["--config.batch_size=1024", "--config.model.dtype=bfloat16", "--config.model.remat=True"], {}),
    ("L-DIT ViT-B 512, batch 1024", "configs/ldit_vitb.py", "v5e:16x16", "(64,4,1)",
     ["--config.batch_size=1024", "--config.model.dtype=bfloat16", "--config.model.remat=False"], {}),
    ("L-DIT ViT-H 512, batch 1024", "configs/ldit_vith.py", "v5p:4x4x4", "(16,4,1)",
     ["--config.batch_size=1024", "--config.model.dtype=bfloat16", "--config.model.remat=False"], {}),
    ("L-DIT ViT-H 512, batch 1024", "configs/ldit_vith.py", "v4:4x8x8", "(64,4,1)",
     ["--config.batch_size=1024", "--config.model.dtype=bfloat16", "--config.model.remat=False"], {}),
    ("EVF-SAM SAM-H + BEiT-3-L, batch 128", "configs/evf_sam_vith.py", "v5e:16x16", "(32,4,2)",
     ["--config.batch_size=128", "--config.grad_accum=1", "--config.model.dtype=bfloat16"], {}),
    ("EVF-SAM SAM-H + BEiT-3-L, batch 128", "configs/evf_sam_vith.py", "v5p:4x4x4", "(16,4,1)",
     ["--config.batch_size=128", "--config.grad_accum=1", "--config.model.dtype=bfloat16"], {}),
    ("L-DIT ViT-H 512, batch 1024, MSA off", "configs/ldit_vith.py", "v5p:4x4x4", "(16,4,1)",
     ["--config.batch_size=1024", "--config.model.dtype=bfloat16", "--config.model.remat=False"], MSA_OFF),
    ("EVF-SAM SAM-H + BEiT-3-L, batch 128, MSA off", "configs/evf_sam_vith.py", "v5p:4x4x4", "(16,4,1)",
     ["--config.batch_size=128", "--config.grad_accum=1", "--config.model.dtype=bfloat16"], MSA_OFF),
]


def command(row, json_path: str | None = None) -> list[str]:
  _, recipe, topology, mesh, overrides, _ = row
  cmd = ["python", "-m", "jaxris.aot", "--config", recipe, "--topology", topology, "--mesh", mesh, *overrides]
  return cmd + (["--json", json_path] if json_path else [])


def shell_command(row, env: dict) -> str:
  """The row's command as a shell line, its environment variables first."""
  return "".join(f"{k}={shlex.quote(v)} " for k, v in env.items()) + shlex.join(command(row))


def run_row(row, timeout: float) -> dict:
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "r.json")
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, *command(row, out)[1:]], cwd=ROOT, capture_output=True, text=True,
                       timeout=timeout, env={**os.environ, **row[5]})
    if r.returncode != 0:
      return {"error": (r.stderr.strip().splitlines() or ["?"])[-1], "returncode": r.returncode}
    report = json.load(open(out))
    report["compile_wall_s"] = time.perf_counter() - t0
    return report


NOTE = ("Compiler estimates (XLA's memory_analysis / cost_analysis for the TPU, compiled on a CPU host with "
        "libtpu), not measured runs. MFU = analytic model FLOPs / (estimated step time x chips x peak bf16 "
        "FLOP/s); the step time is XLA's TPU cost model's (optimal_seconds) where it gives one, else the roofline "
        "of XLA's per-chip FLOPs and HBM bytes; communication not included. jaxris' TPU attention kernels "
        "(its own grid kernel for SAM's ViT, jaxris/ops/grid_attention.py, and Pallas' splash attention) carry "
        "no cost estimate, so XLA charges them their bytes only: their FLOPs are added at peak, each kernel "
        "costing the slower of the two (jaxris/pallas_costs.py; before session 13 the uncosted backward "
        "kernels of flash attention were not counted, and ViT-H on v5p-128 read 45%).")


def table(rows, results: dict) -> str:
  gib = lambda b: f"{b / (1 << 30):.1f} GiB"
  lines = ["| model | pod | mesh (data, fsdp, tensor) | dtype / remat | attention | per-chip memory | fits | "
           "est. MFU | est. images/s | command |", "|---|---|---|---|---|---|---|---|---|---|"]
  for i, row in enumerate(rows):
    what, _, topology, mesh, _, env = row
    r = results.get(str(i))
    if r is not None and r.get("attention") == "xla":
      env = {"JAXRIS_ATTENTION": "xla", **env}
    cmd = "`" + shell_command(row, env) + "`"
    if r is None or "error" in r:
      note = "not run" if r is None else f"failed: {r['error']}"
      lines.append(f"| {what} | {topology} | {mesh} | | | {note} | | | | {cmd} |")
      continue
    pod = f"{topology} ({r['chips']} chips)"
    source = "cost model" if r["step_time_source"].startswith("xla optimal_seconds") else "roofline"
    mfu = "n/a" if r["estimated_mfu"] is None else f"{100 * r['estimated_mfu']:.1f}% ({source})"  # one decimal: 49.7% is not 50%
    ips = "n/a" if r["images_per_s"] is None else f"{r['images_per_s']:.0f}"
    lines.append(f"| {what} | {pod} | {tuple(r['mesh'])} | {r['dtype']} / {r['remat']} | {r.get('attention', 'xla')} | "
                 f"{gib(r['per_chip_bytes'])} of {gib(r['hbm_bytes'])} | {'yes' if r['fits'] else 'NO'} | "
                 f"{mfu} | {ips} | {cmd} |")
  return "\n".join(lines)


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--only", type=int, action="append", help="row index (repeatable); default: every row")
  p.add_argument("--results", default=None, help="JSON file of results to extend (rows in it are not rerun)")
  p.add_argument("--timeout", type=float, default=3600, help="seconds per compile")
  p.add_argument("--markdown", default=None, help="also write the table (and its note) to this file, e.g. "
                 "benchmarks/pod_plan.md")
  a = p.parse_args()
  results = json.load(open(a.results)) if a.results and os.path.exists(a.results) else {}
  for i in a.only if a.only is not None else range(len(ROWS)):
    if str(i) in results and "error" not in results[str(i)]:
      continue
    print(f"[{i}] {shell_command(ROWS[i], ROWS[i][5])}", file=sys.stderr, flush=True)
    try:
      results[str(i)] = run_row(ROWS[i], a.timeout)
    except subprocess.TimeoutExpired:
      results[str(i)] = {"error": f"compile did not finish in {a.timeout:.0f} s", "returncode": None}
    print(f"[{i}] {json.dumps(results[str(i)])[:300]}", file=sys.stderr, flush=True)
    if a.results:
      with open(a.results, "w") as f:
        json.dump(results, f, indent=1)
  text = table(ROWS, results) + "\n\n" + NOTE
  print(text)
  if a.markdown:
    with open(a.markdown, "w") as f:
      f.write(text + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
