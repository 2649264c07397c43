"""DIT-SAM's Table 1 (+ Table 2/4 rows, EVF-SAM and the SAM+CLIP bridge next to them) on the built-in RefShapes
data, same budget per row.

  python benchmarks/refshapes_table1.py                         # every row, 300 steps each
  python benchmarks/refshapes_table1.py --rows ldit edit --steps 700
  python benchmarks/refshapes_table1.py --rows ldit edit add2 default --seeds 0 1 2   # mean ± std, order check

Each row trains its recipe's CPU-sized RefShapes model (``configs/<recipe>.py:refshapes``: a
4-block ViT of width 128 on 128 px, the real MiniLM as frozen text encoder, batch 16) for the
same number of steps from the same seed, then evaluates val, testA and testB (testB holds out
attribute combinations never seen in training). Rows run one after another as
``python -m jaxris.train`` subprocesses in DIR/<row>; a row whose eval files exist is read, not
retrained, so an interrupted sweep continues where it stopped.

The paper's ``*`` rows freeze the image encoder. On RefShapes the encoder starts from random
weights (there is no SAM checkpoint for a 128-wide ViT), so those rows show what the prompts
and the decoder make of fixed random features, not what a frozen pretrained SAM gives.

The paper reports L-DIT > E-DIT > Add layers > Default on RefCOCO. The table prints whatever
this budget measures, and below it whether that order holds on the mean mIoU of each split and in
how many seeds it holds seed by seed.

The bridge rows (configs/bridge_vitb.py:refshapes) add a random 4-block CLIP at a 12x12 grid beside
the same small SAM, and train DFAM's set losses with the SAM loss. "bridge + no-target" trains and
evaluates on the no-target variants of the splits (val_nt, testA_nt, testB_nt: a share of the
expressions names a shape that is not drawn) with the no-target head, and adds N-acc / T-acc.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import timing  # noqa: E402

# name -> (label as in the paper, recipe file, extra config argument)
ROWS = {
    "default": ("Default", "default_vitb", ""),
    "add2": ("Add 2 decoder layers", "add2_vitb", ""),
    "edit": ("E-DIT", "edit_vitb", ""),
    "ldit": ("L-DIT", "ldit_vitb", ""),
    "default_frozen": ("Default*", "default_vitb", "freeze=visual_encoder"),
    "add2_frozen": ("Add 2 decoder layers*", "add2_vitb", "freeze=visual_encoder"),
    "token_ldit": ("L-DIT static tokens (Table 2)", "token_ldit_vitb", ""),
    "token_edit": ("E-DIT + tokens (Table 2)", "token_edit_vitb", ""),
    "crossatt": ("CrossAtt (Table 4)", "crossatt_vitb", ""),
    "crossatt_ffn": ("CrossAtt+FFN (Table 4)", "crossatt_ffn_vitb", ""),
    "evf": ("EVF-SAM (early fusion)", "evf_sam_vith", ""),
    "bridge": ("SAM+CLIP bridge (BERT [CLS] query)", "bridge_vitb", ""),
    "bridge_nt": ("SAM+CLIP bridge + no-target head (*_nt splits)", "bridge_vitb", "no_target=1"),
}
SPLITS = ("val", "testA", "testB")


def splits_of(name: str) -> tuple[str, ...]:
  """The row's evaluation splits: the no-target rows read the *_nt variants."""
  return tuple(f"{s}_nt" for s in SPLITS) if "no_target" in ROWS[name][2] else SPLITS


def run_row(name: str, workdir: str, steps: int, seed: int) -> float:
  """Trains and evaluates one row (unless done); returns the wall time in seconds (0 if cached)."""
  if all(os.path.isfile(os.path.join(workdir, f"eval_{s}.json")) for s in splits_of(name)):
    return 0.0
  _, recipe, extra = ROWS[name]
  arg = ",".join(filter(None, ["refshapes", f"steps={steps}", extra]))
  cmd = [sys.executable, "-m", "jaxris.train", "--config", os.path.join(ROOT, "configs", f"{recipe}.py:{arg}"),
         "--workdir", workdir, f"--config.seed={seed}", "--config.predict_examples=0", f"--config.eval_every={steps + 1}"]
  print(f"\n### {ROWS[name][0]}: {' '.join(cmd[1:])}", flush=True)
  start = time.perf_counter()
  subprocess.run(cmd, check=True, cwd=ROOT)
  seconds = time.perf_counter() - start
  with open(os.path.join(workdir, "wall_seconds.json"), "w") as f:
    json.dump({"seconds": seconds, "steps": steps}, f)
  return seconds


# The paper's Table 1 order on RefCOCO, best first; the sweep checks it on RefShapes.
PAPER_ORDER = ("ldit", "edit", "add2", "default")


def read_row(name: str, workdir: str) -> dict:
  """{split: eval dict, "minutes": wall minutes (nan if not recorded)} of one finished row."""
  out = {s: json.load(open(os.path.join(workdir, f"eval_{r}.json"))) for s, r in zip(SPLITS, splits_of(name))}
  wall = os.path.join(workdir, "wall_seconds.json")
  out["minutes"] = json.load(open(wall))["seconds"] / 60 if os.path.isfile(wall) else float("nan")
  return out


def mean_std(values: list[float]) -> str:
  """'m' for one value, 'm ± s' (sample standard deviation) for several; unrecorded (nan) values are left
  out, '-' if none is left."""
  values = [v for v in values if v == v]
  if not values:
    return "-"
  if len(values) == 1:
    return f"{values[0]:.2f}"
  return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def table(results: dict) -> tuple[list[str], list[list[str]]]:
  """Headers and rows: oIoU / mIoU and P@0.5 per split (mean ± std over seeds), N-acc / T-acc, minutes."""
  headers = (["method"] + [f"{s} oIoU / mIoU" for s in SPLITS] + [f"{s} P@0.5" for s in SPLITS]
             + ["val N-acc / T-acc", "train+eval min"])
  rows = []
  for name, runs in results.items():
    col = lambda split, key: [r[split][key] for r in runs]
    nt = (f"{mean_std(col('val', 'N-acc'))} / {mean_std(col('val', 'T-acc'))}" if "N-acc" in runs[0]["val"] else "-")
    minutes = [r["minutes"] for r in runs]
    rows.append([ROWS[name][0]] + [f"{mean_std(col(s, 'oIoU'))} / {mean_std(col(s, 'mIoU'))}" for s in SPLITS]
                + [mean_std(col(s, "P@0.5")) for s in SPLITS] + [nt, mean_std(minutes)])
  return headers, rows


def ordering_report(results: dict) -> list[str]:
  """Whether the paper's order (PAPER_ORDER, on mIoU) holds per split: on the means and seed by seed."""
  names = [n for n in PAPER_ORDER if n in results]
  if len(names) < 2:
    return []
  seeds = len(results[names[0]])  # every row ran the same seeds
  labels = " > ".join(ROWS[n][0] for n in names)
  lines = [f"paper's order {labels}, on mIoU:"]
  for split in SPLITS:
    means = [statistics.mean(r[split]["mIoU"] for r in results[n]) for n in names]
    holds = all(a > b for a, b in zip(means, means[1:]))
    per_seed = sum(all(results[a][i][split]["mIoU"] > results[b][i][split]["mIoU"] for a, b in zip(names, names[1:]))
                   for i in range(seeds))
    measured = " > ".join(f"{ROWS[n][0]} {m:.2f}" for n, m in sorted(zip(names, means), key=lambda x: -x[1]))
    lines.append(f"  {split}: {'holds' if holds else 'does not hold'} on the means ({measured}); "
                 f"holds in {per_seed} of {seeds} seeds")
  return lines


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--rows", nargs="*", default=list(ROWS), choices=list(ROWS), help="rows to train, in order")
  parser.add_argument("--steps", type=int, default=300, help="train steps per row (batch 16)")
  parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                      help="seeds per row; with several, the table gives mean ± std (sample) over them")
  parser.add_argument("--dir", default=os.path.join(ROOT, "runs", "refshapes_table1"),
                      help="one workdir per row and seed below this (<row>_<steps>steps_seed<seed>)")
  args = parser.parse_args()

  results = {}
  for seed in args.seeds:  # seed-major: a first full table exists before the repeats start
    for name in args.rows:
      workdir = os.path.join(args.dir, f"{name}_{args.steps}steps_seed{seed}")
      run_row(name, workdir, args.steps, seed)
      results.setdefault(name, []).append(read_row(name, workdir))

  seeds = ", ".join(map(str, args.seeds))
  spread = "; mean ± std over the seeds" if len(args.seeds) > 1 else ""
  print(f"\nRefShapes, {args.steps} steps x batch 16 per row, seed {seeds}{spread}; oIoU / mIoU in percent "
        f"(P@0.5 in the last columns)\n")
  timing.print_table(*table(results))
  for line in ordering_report(results):
    print(line)


if __name__ == "__main__":
  main()
