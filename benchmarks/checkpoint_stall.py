"""How long a checkpoint save holds up training: synchronous vs asynchronous Orbax saves.

  python benchmarks/checkpoint_stall.py [--mb 400] [--saves 4]

Saves a train-state-like dict of float32 arrays (`--mb` megabytes) `--saves` times with
jaxris.checkpoint.Checkpointer, synchronously and asynchronously, and prints the stall per save
(the time `save` blocks the caller; an asynchronous save goes on writing in the background while
the next steps run). The first save of each mode includes Orbax's one-off set-up.
"""

import argparse
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxris.checkpoint import Checkpointer


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--mb", type=float, default=400, help="size of the saved state in MB")
  p.add_argument("--saves", type=int, default=4)
  args = p.parse_args()
  n = int(args.mb * 2**20 / 4 / 16)
  state = {f"w{i}": jnp.asarray(np.random.default_rng(i).standard_normal(n, np.float32)) for i in range(16)}
  rows = []
  for asynchronous in (False, True):
    with tempfile.TemporaryDirectory() as d:
      ckpt = Checkpointer(d, keep=2, asynchronous=asynchronous)
      stalls = []
      for step in range(1, args.saves + 1):
        state = jax.tree.map(lambda x: x + 1, state)  # a new state each "step"
        jax.block_until_ready(state)
        stalls.append(ckpt.save(step, state))
        time.sleep(1.0)  # the training steps between two saves
      t = time.perf_counter()
      ckpt.close()
      rows.append(("async" if asynchronous else "sync", stalls, time.perf_counter() - t))
  print(f"# {args.mb:.0f} MB state, {args.saves} saves, jax {jax.__version__}")
  print("| save mode | first save stall s | later saves, median stall s | wait at close s |")
  print("|---|---|---|---|")
  for mode, stalls, close in rows:
    print(f"| {mode} | {stalls[0]:.2f} | {statistics.median(stalls[1:]):.2f} | {close:.2f} |")


if __name__ == "__main__":
  main()
