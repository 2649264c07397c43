"""Orbax checkpointing of the train state (a flat dict of arrays), resume, and params export.

``DIR/checkpoints/<step>/`` holds full train states (parameters, optimizer state, EMA, step);
the newest is restored when the same command runs again. ``DIR/model/`` holds the exported
parameters in jaxris's weights format (config.json + params.safetensors + vocab.txt), which
``jaxris.evaluate`` and ``jaxris.predict --workdir`` read.
"""

from __future__ import annotations

import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxris.weights import store


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


def export_params(workdir: str, family: str, config: dict, params: dict, vocab_file: str | None = None,
                  preprocess=None) -> str:
  """Writes DIR/model; every process calls it (parameters are gathered), process 0 writes."""
  from jax.experimental import multihost_utils

  out = os.path.join(workdir, "model")
  host = multihost_utils.process_allgather(params, tiled=True)
  if jax.process_index() == 0:
    store.save(out, family, config, {k: np.asarray(v) for k, v in host.items()})
    if vocab_file:  # BERT's WordPiece vocabulary, or BEiT-3's sentencepiece model under EVF-SAM's file name
      name = "vocab.txt" if vocab_file.endswith(".txt") else "sentencepiece.bpe.model"
      shutil.copy(vocab_file, os.path.join(out, name))
    if preprocess is not None:
      from jaxris.inference.ris_predictor import save_preprocess
      save_preprocess(out, preprocess)
  return out
