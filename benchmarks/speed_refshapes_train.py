"""Throughput of README command 1's train step (the main job: L-DIT on RefShapes, batch 16) and where a
step's time goes.

  python benchmarks/speed_refshapes_train.py                         # this tree: images/s + breakdown
  python benchmarks/speed_refshapes_train.py --against 6765a11       # before/after, same run, same batches
  python benchmarks/speed_refshapes_train.py --config configs/edit_vitb.py:refshapes --rounds 5
  python benchmarks/speed_refshapes_train.py --set model.dtype=bfloat16      # a recipe field changed

Images/s is the recipe's own update step (``jaxris.train.create_trainer`` on the model ``jaxris.build``
makes from the recipe, state donated, as the training loop runs it) on real RefShapes batches from the
training input pipeline, prefetched so that only the step is timed. ``--against REV`` runs the same
measurement on a git worktree of REV in a second process; the two processes take turns (one round of
``--steps`` steps each, ``--rounds`` times) so that load from other jobs hits both alike, and the table
gives the median images/s of each and their ratio.

The breakdown (this tree only) times, per batch of 16: the input pipeline alone (tf.data, scenes
rendered and tokenised), the host-to-device copy, the forward pass, forward + backward, and the whole
update step (optimizer = step - forward/backward), each jitted alone, called in turn in every round,
medians over rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

# A worker runs in either tree: `setup` below imports whichever jaxris comes first on its path (the
# tree under test), then it answers "go N" lines on stdin with the seconds N steps took.
WORKER = r"""
import json, sys, time
sys.path.append(sys.argv[2])  # this benchmark's folder, after the tree under test
import jax
from speed_refshapes_train import setup
run = setup(sys.argv[1], json.loads(sys.argv[3]))
batches = [run["to_device"](b) for b, _ in zip(run["host_batches"], range(8))]
state = run["trainer"].state
for b in batches[:2]:  # compile + warm up
  state, m = run["trainer"].step(state, b)
jax.block_until_ready(m)
print(json.dumps({"ready": run["cfg"].batch_size}), flush=True)
i = 0
for line in sys.stdin:
  n = int(line.split()[1])
  t0 = time.perf_counter()
  for _ in range(n):
    state, m = run["trainer"].step(state, batches[i % len(batches)]); i += 1
  jax.block_until_ready(m)
  print(json.dumps({"seconds": time.perf_counter() - t0}), flush=True)
"""


def setup(config: str, overrides: dict | None = None) -> dict:
  """The main job's parts for `config` (recipe[:arg]) with `overrides` ({"model.dtype": "bfloat16"}, as
  jaxris.train's --config.<field>=<value>), built as jaxris.train builds them, with the jaxris that is
  first on the path: cfg, trainer (one device), host_batches (the training input pipeline's iterator),
  to_device (host batch -> the step's input)."""
  import ast
  import importlib.util

  from jaxris import build
  from jaxris.configs import resolve_config_path
  from jaxris.data import inputs
  from jaxris.data.loader import make_dataset
  from jaxris.models.functional import split_params
  from jaxris.sharding import global_batch, make_mesh
  from jaxris.train import create_trainer

  path, _, arg = config.partition(":")
  spec = importlib.util.spec_from_file_location("recipe", resolve_config_path(["--config", path])[1])
  recipe = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(recipe)
  cfg = recipe.get_config(arg or None)
  for field, value in (overrides or {}).items():
    try:
      value = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      pass  # a plain string such as bfloat16
    cfg.update_from_flattened_dict({field: value})
  model, _, tokenizer = build.build(cfg.model, cfg.init, cfg.seed)
  # The fields the loss and the model read, as jaxris.train picks them (the bridge's loss also reads
  # the no-target flags and categories).
  keys = tuple(dict.fromkeys(getattr(model, "LOSS_INPUTS", ("mask",)) + model.BATCH_INPUTS))
  graphdef, params, rest = split_params(model)
  del model
  mesh = make_mesh((1, 1, 1))
  examples = inputs.train_examples(cfg)
  trainer = create_trainer(cfg, graphdef, params, rest, mesh, max(len(examples) // cfg.batch_size, 1), cfg.steps)
  ds = make_dataset(examples, inputs.preprocess_for(cfg), tokenizer, cfg.batch_size, train=True, seed=cfg.seed,
                    train_sentences=cfg.data.train_sentences)
  return {"cfg": cfg, "trainer": trainer, "host_batches": ds.as_numpy_iterator(),
          "to_device": lambda host: global_batch({k: host[k] for k in keys}, mesh)}


class Worker:
  """A process holding one tree's compiled step; `run(n)` -> seconds for n steps."""

  def __init__(self, tree: str, config: str, overrides: dict):
    env = {**os.environ, "PYTHONPATH": tree, "TF_CPP_MIN_LOG_LEVEL": "2"}
    here = os.path.dirname(os.path.abspath(__file__))
    self.proc = subprocess.Popen([sys.executable, "-c", WORKER, config, here, json.dumps(overrides)], cwd=tree,
                                 env=env, text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    self.batch = self._read()["ready"]

  def _read(self) -> dict:
    for line in self.proc.stdout:
      if line.startswith("{"):
        return json.loads(line)
    raise RuntimeError(f"worker exited with {self.proc.wait()} before answering")

  def run(self, n: int) -> float:
    self.proc.stdin.write(f"go {n}\n")
    self.proc.stdin.flush()
    return self._read()["seconds"]

  def close(self):
    self.proc.stdin.close()
    self.proc.wait()


def compare(config: str, overrides: dict, against: str | None, steps: int, rounds: int) -> None:
  from benchmarks import timing
  here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  trees = {"this tree": here}
  tmp = None
  if against:
    tmp = tempfile.mkdtemp(prefix="jaxris-against-")
    subprocess.run(["git", "-C", here, "worktree", "add", "--detach", tmp, against], check=True,
                   stdout=subprocess.DEVNULL)
    trees = {against: tmp, "this tree": here}
  try:
    workers = {name: Worker(tree, config, overrides) for name, tree in trees.items()}
    rates = {name: [] for name in trees}
    for r in range(rounds):
      for name, w in workers.items():
        rates[name].append(steps * w.batch / w.run(steps))
      print(f"round {r + 1}/{rounds}: " + ", ".join(f"{n} {v[-1]:.1f} img/s" for n, v in rates.items()),
            flush=True)
    for w in workers.values():
      w.close()
  finally:
    if tmp:
      subprocess.run(["git", "-C", here, "worktree", "remove", "--force", tmp], check=False)
  base = statistics.median(rates[list(trees)[0]])
  rows = [[name, statistics.median(v), min(v), max(v), statistics.median(v) / base] for name, v in rates.items()]
  print(f"\n{config}: train step images/s ({rounds} rounds of {steps} steps, batch {workers[list(trees)[0]].batch})")
  timing.print_table(["code", "images/s (median)", "min", "max", "ratio"], rows)


def breakdown(config: str, overrides: dict, rounds: int) -> None:
  """Per-batch seconds of each part of a step (this tree)."""
  from benchmarks import timing
  import jax

  run = setup(config, overrides)
  cfg, trainer, ds = run["cfg"], run["trainer"], run["host_batches"]
  n_input = 40
  next(ds)
  t0 = time.perf_counter()
  host = [next(ds) for _ in range(n_input)]
  input_s = (time.perf_counter() - t0) / n_input
  h2d = timing.median_seconds(lambda: jax.block_until_ready(run["to_device"](host[0])), rounds * 5)
  batch = run["to_device"](host[0])
  key = jax.random.key(0)
  fwd = jax.jit(trainer.loss)  # the step's own loss (frozen parts under stop_gradient)
  fwd_bwd = jax.jit(jax.value_and_grad(trainer.loss))
  holder = {"state": trainer.state}

  def step():
    holder["state"], m = trainer.step(holder["state"], batch)
    jax.block_until_ready(m)
  parts = {"forward": lambda: jax.block_until_ready(fwd(holder["state"]["params"], batch, key)),
           "forward + backward": lambda: jax.block_until_ready(fwd_bwd(holder["state"]["params"], batch, key)),
           "step": step}
  # Interleaved (one call of each per round) so that load from other jobs hits every part alike.
  times = {name: [] for name in parts}
  for r in range(2 + rounds * 3):
    for name, f in parts.items():
      t0 = time.perf_counter()
      f()
      if r >= 2:  # the first two rounds compile and warm up
        times[name].append(time.perf_counter() - t0)
  fwd_s, fwd_bwd_s, step_s = (statistics.median(times[n]) for n in parts)
  rows = [["input pipeline (tf.data, alone)", input_s], ["host -> device", h2d], ["forward", fwd_s],
          ["backward", fwd_bwd_s - fwd_s], ["optimizer (+ EMA, guard)", step_s - fwd_bwd_s],
          ["update step (forward + backward + optimizer)", step_s]]
  print(f"\n{config}: per batch of {cfg.batch_size} (ms; medians, this tree)")
  timing.print_table(["part", "ms per batch", "share of the step"],
                     [[name, 1e3 * s, (f"{s / step_s:.0%}" if name != rows[-1][0] else "100%")] for name, s in rows])
  print(f"update step: {cfg.batch_size / step_s:.1f} images/s; the input pipeline alone: "
        f"{cfg.batch_size / input_s:.0f} images/s")


def main(argv=None) -> int:
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this tree's jaxris
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default="configs/ldit_vitb.py:refshapes", help="recipe[:arg] (README command 1's)")
  p.add_argument("--against", help="a git revision to compare with (run from a worktree of it, same batches)")
  p.add_argument("--steps", type=int, default=20, help="steps per round")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                 help="override a recipe field, as jaxris.train's --config.FIELD=VALUE (repeatable), e.g. "
                      "--set model.dtype=bfloat16")
  p.add_argument("--no-breakdown", action="store_true", help="images/s only")
  args = p.parse_args(argv)
  overrides = dict(item.split("=", 1) for item in args.set)
  compare(args.config, overrides, args.against, args.steps, args.rounds)
  if not args.no_breakdown:
    breakdown(args.config, overrides, args.rounds)
  return 0


if __name__ == "__main__":
  sys.exit(main())
