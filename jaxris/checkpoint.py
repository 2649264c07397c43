"""Orbax checkpointing of the train state (a flat dict of arrays) and resume.

``DIR/checkpoints/<step>/`` holds full train states (parameters, optimizer state, EMA, step);
the newest complete one is restored when the same command runs again. Saves are asynchronous:
``save`` returns once the arrays are copied off the devices, and the files are written in the
background while training goes on. Orbax writes each checkpoint into a temporary directory and
renames it when complete, so a process killed in the middle of a write (``kill -9``) leaves no
checkpoint that could be restored half-written: the next run resumes from the newest complete one.
Every process writes its own part. The exported model (``DIR/model``) is written by
``jaxris.inference.export``.
"""

from __future__ import annotations

import os
import time

import orbax.checkpoint as ocp


class Checkpointer:
  def __init__(self, workdir: str, keep: int = 2, asynchronous: bool = True):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self.manager = ocp.CheckpointManager(self.directory, options=ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=asynchronous))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, wait: bool = False) -> float:
    """Starts writing `state` as checkpoint `step`; returns the seconds training was held up for.
    `wait`: return only when the checkpoint is complete on disk (before exiting)."""
    start = time.perf_counter()
    self.manager.save(step, args=ocp.args.StandardSave(state), force=True)
    if wait:
      self.manager.wait_until_finished()
    return time.perf_counter() - start

  def restore(self, step: int, abstract_state):
    """`abstract_state`: jax.ShapeDtypeStruct leaves carrying the target shardings."""
    return self.manager.restore(step, args=ocp.args.StandardRestore(abstract_state))

  def close(self) -> None:
    """Waits for the last write, then releases the manager."""
    self.manager.wait_until_finished()
    self.manager.close()
