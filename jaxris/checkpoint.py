"""Orbax checkpointing of the train state (a flat dict of arrays) and resume.

``DIR/checkpoints/<step>/`` holds full train states (parameters, optimizer state, EMA, step);
the newest is restored when the same command runs again. The exported model (``DIR/model``) is
written by ``jaxris.inference.export``.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp

class Checkpointer:
  def __init__(self, workdir: str, keep: int = 2):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self.manager = ocp.CheckpointManager(self.directory, options=ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=False))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state) -> None:
    self.manager.save(step, args=ocp.args.StandardSave(state), force=True)
    self.manager.wait_until_finished()

  def restore(self, step: int, abstract_state):
    """`abstract_state`: jax.ShapeDtypeStruct leaves carrying the target shardings."""
    return self.manager.restore(step, args=ocp.args.StandardRestore(abstract_state))

  def close(self) -> None:
    self.manager.close()
