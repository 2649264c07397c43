"""Preemption: SIGTERM (what TPU VMs, GKE and SLURM send before taking a machine away) ends the run
cleanly at the next step boundary, after a checkpoint, so that rerunning the same command resumes.

One process: a SIGTERM handler sets a flag that the loop reads after each step. Several processes:
JAX's preemption sync manager (started by ``jax.distributed.initialize``) hears the signal on any
host and makes every process agree on the same step to stop at.
"""

from __future__ import annotations

import signal
import threading

import jax
from jax.experimental import multihost_utils


class PreemptionWatch:
  def __init__(self):
    self.signalled = False
    self._previous = None
    # With several processes JAX's own notifier listens for SIGTERM; a Python handler would replace it.
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    self.signalled = True

  def should_stop(self, step: int) -> bool:
    """True at the step every process stops at after a SIGTERM."""
    if jax.process_count() > 1:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.signalled

  def close(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None
