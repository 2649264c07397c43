"""Train a text-prompted SAM.

  python -m jaxris.train --config configs/ldit_vitb.py:refshapes --workdir runs/ldit_rs
  python -m jaxris.train --config configs/ldit_vitb.py --workdir runs/ldit --config.batch_size=32

Any config field can be overridden with --config.<field>=<value>. Running the same command again
resumes from the newest checkpoint in --workdir. The sections below follow big_vision's train.py:
config and start-up checks, mesh, input, model, sharding, update step, checkpoint, loop, evals.
Writes DIR/metrics.jsonl, TensorBoard events in DIR/tb, checkpoints in DIR/checkpoints, the final
weights in DIR/model, eval_<split>.json per evaluation split and overlays in DIR/predictions.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # tf.data on the host only: keep its start-up chatter quiet

import jax
import jax.numpy as jnp
import numpy as np
import optax

from flax import nnx

from jaxris import build
from jaxris import checkpoint as ckpt
from jaxris.inference import evaluation as ev
from jaxris.configs import resolve_config_path
from jaxris.data import inputs
from jaxris.data.loader import make_dataset
from jaxris.inference.export import export_model, recipe_of
from jaxris.inference.overlays import write_examples
from jaxris.losses import LOSSES, STRUCTURED_LOSSES
from jaxris.models.functional import buffers, merge, split_params
from jaxris.preemption import PreemptionWatch
from jaxris.sharding import global_batch, logical_axes, make_mesh, plan, replicated, state_shardings


def lr_schedule(opt, steps_per_epoch: int, total_steps: int) -> optax.Schedule:
  """Learning rate per optimizer step, from optax: 'wcosine' (official DIT: linear warm-up from warmup_lr,
  then cosine to min_lr at the last step), 'step' (the DIT paper: x gamma at each milestone epoch after
  the warm-up, or at each of ``milestone_steps`` optimizer steps) or 'linear' (LISA/EVF-SAM's WarmupDecayLR:
  linear warm-up, then linear decay to min_lr).
  The warm-up lasts ``warmup_steps`` when > 0, else ``warmup_epochs`` epochs."""
  warmup = max(int(opt.warmup_steps or round(opt.warmup_epochs * steps_per_epoch)), 0)
  warm = optax.linear_schedule(opt.warmup_lr, opt.lr, max(warmup, 1))
  after = max(total_steps - warmup, 1)
  if opt.schedule == "wcosine":
    rest = optax.cosine_decay_schedule(opt.lr, after, alpha=opt.min_lr / opt.lr)
  elif opt.schedule == "step":
    # join_schedules counts the second schedule's steps from the warm-up's end.
    bounds = {int(m * steps_per_epoch) - warmup: opt.gamma for m in opt.milestones}
    bounds.update({int(m) - warmup: opt.gamma for m in opt.get("milestone_steps", ())})  # in optimizer steps
    rest = optax.piecewise_constant_schedule(opt.lr, bounds)
  elif opt.schedule == "linear":
    rest = optax.linear_schedule(opt.lr, opt.min_lr, after)
  else:
    raise ValueError(f"unknown schedule {opt.schedule!r}: 'wcosine', 'step' or 'linear'")
  return optax.join_schedules([warm, rest], [warmup]) if warmup else rest


def make_optimizer(cfg, params: dict, steps_per_epoch: int, total_steps: int):
  """Adam (official betas/eps) + global-norm clipping; frozen modules get no updates."""
  opt = cfg.optimizer
  schedule = lr_schedule(opt, steps_per_epoch, total_steps)
  tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip) if opt.grad_clip else optax.identity(),
                   optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay))
  rules = tuple(opt.get("lr_scale", ()))
  problem = lr_scale_problem(rules, params)
  if problem:
    raise ValueError(problem)
  scales = {k: lr_scale(k, rules) for k in params}
  if any(s != 1.0 for s in scales.values()):
    tx = optax.chain(tx, scale_updates_by_name(scales))
  labels = {k: "frozen" if is_frozen(k, cfg.freeze) else "train" for k in params}
  tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
  if cfg.grad_accum > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=cfg.grad_accum)
  return tx, schedule


def is_frozen(name: str, frozen: tuple[str, ...]) -> bool:
  return any(_under(name, f) for f in frozen)


def _under(name: str, prefix: str) -> bool:
  return name == prefix or name.startswith(prefix + ".")


def lr_scale(name: str, rules) -> float:
  """The learning-rate multiplier of parameter `name`: the first (module prefix, scale) rule of
  `optimizer.lr_scale` whose prefix holds it, else 1 (e.g. (("mask_decoder", 0.3),): a pretrained
  decoder learns at 0.3x the rate of the randomly initialised encoder)."""
  return next((float(s) for prefix, s in rules if _under(name, prefix)), 1.0)


def lr_scale_problem(rules, names) -> str | None:
  """What is wrong with `optimizer.lr_scale` for these parameter names (a prefix that holds none of
  them is a typo that would silently train at the base rate), or None."""
  unmatched = [prefix for prefix, _ in rules if not any(_under(k, prefix) for k in names)]
  if unmatched:
    return (f"optimizer.lr_scale: no parameter lies under {unmatched}; the model's top-level modules are "
            f"{sorted({k.split('.')[0] for k in names})}")
  return None


def scale_updates_by_name(scales: dict):
  """Multiplies each parameter's update by its scale: after Adam(W) this is the same as scaling that
  parameter's learning rate (weight decay included), while gradient clipping stays global."""
  def update(updates, state, params=None):
    del params
    return {k: jax.tree.map(lambda u, s=scales[k]: u * s, u) for k, u in updates.items()}, state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


@dataclasses.dataclass
class Trainer:
  """Everything the loop needs: the sharded state, its shardings and the jitted update step."""
  state: dict
  shardings: dict
  step: Callable            # (state, batch) -> (state, {"loss", "grad_norm"}), state donated
  schedule: Callable        # optimizer step -> learning rate
  abstract: dict            # shapes/dtypes of the state (for restoring checkpoints)
  loss: Callable            # (params, batch, dropout key) -> loss: what `step` differentiates (benchmarks time it)


def create_trainer(cfg, graphdef, params: dict, rest, mesh, steps_per_epoch: int, total_steps: int,
                   materialize: bool = True) -> Trainer:
  """Shards the train state by the parameters' logical axes and `cfg.sharding_rules`, and builds the
  update step with explicit shardings. `materialize=False` (jaxris.aot: abstract `params`, a mesh of
  TPU devices described on CPU) builds the step and shardings only; `state` is then None."""
  tx, schedule = make_optimizer(cfg, params, steps_per_epoch, total_steps)

  def init_state(params):
    state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32),
             "skipped": jnp.zeros((), jnp.int32)}  # updates dropped for a non-finite loss or gradient
    if cfg.ema_decay:
      state["ema"] = params
    return state
  abstract = jax.eval_shape(init_state, params)
  param_plan = plan(logical_axes(graphdef, params, rest), {k: v.shape for k, v in params.items()}, mesh,
                    cfg.sharding_rules)
  if param_plan.unnamed or param_plan.fallbacks:
    from absl import logging
    logging.warning("sharding: not split as the rules ask (mesh %s):\n%s", dict(mesh.shape), param_plan.report())
  shardings = state_shardings(abstract, param_plan, mesh)
  state = jax.jit(init_state, out_shardings=shardings)(params) if materialize else None
  structured = cfg.loss in STRUCTURED_LOSSES  # a dict of outputs (the bridge) against the whole batch
  loss_of = STRUCTURED_LOSSES[cfg.loss] if structured else LOSSES[cfg.loss]
  loss_weights = dict(cfg.loss_weights)

  def loss_fn(params, batch, key):
    # Frozen modules: no gradient is computed for them at all (XLA drops the dead branches).
    params = {k: jax.lax.stop_gradient(v) if is_frozen(k, cfg.freeze) else v for k, v in params.items()}
    model = merge(graphdef, params, rest)
    inputs = [batch[k] for k in model.BATCH_INPUTS]
    if structured:
      outputs = model.train_outputs(*inputs, rngs=nnx.Rngs(dropout=key))
      return loss_of(outputs, batch, jax.random.fold_in(key, 1), **loss_weights)
    logits = model(*inputs, rngs=nnx.Rngs(dropout=key))
    return loss_of(logits.astype(jnp.float32), batch["mask"])

  def train_step(state, batch):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):  # activations' constraints see the mesh
      return _train_step(state, batch)

  def _train_step(state, batch):
    key = jax.random.fold_in(jax.random.key(cfg.seed), state["step"])
    loss, grads = jax.value_and_grad(loss_fn)(state["params"], batch, key)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    new = {"params": params, "opt_state": opt_state, "step": state["step"] + 1}
    if cfg.ema_decay:  # official DIT EMA: the decay warms up as min(d, (t + 1) / (t + 10))
      # Once per optimizer step: under gradient accumulation only every grad_accum-th micro-step
      # changes the parameters, and an EMA taken at every micro-step would decay as d^grad_accum.
      t = (state["step"] // cfg.grad_accum).astype(jnp.float32)
      d = jnp.minimum(cfg.ema_decay, (t + 1) / (t + 10))
      d = jnp.where(new["step"] % cfg.grad_accum == 0, d, 1.0)
      new["ema"] = jax.tree.map(lambda e, p: d * e + (1 - d) * p, state["ema"], params)
    # A non-finite loss or gradient leaves parameters, optimizer state and EMA as they were (the data
    # moves on); the host stops the run once more than cfg.skip_nonfinite updates were dropped.
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    new = {k: v if k == "step" else jax.tree.map(lambda a, b: jnp.where(finite, a, b), v, state[k])
           for k, v in new.items()}
    new["skipped"] = state["skipped"] + (~finite).astype(jnp.int32)
    return new, {"loss": loss, "grad_norm": grad_norm, "skipped": new["skipped"]}

  step = jax.jit(train_step, in_shardings=(shardings, None), out_shardings=(shardings, replicated(mesh)),
                 donate_argnums=0)
  return Trainer(state, shardings, step, schedule, abstract, loss_fn)


def train(cfg, workdir: str, stop_after: int | None = None) -> int:
  """Trains (or resumes) per `cfg` in `workdir`; returns an exit status. `stop_after` leaves the loop
  after that step as a preempted job would (the tests use it to check resuming)."""
  from absl import logging
  from tqdm import tqdm


  logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
  # --- Start-up checks: fail within seconds, before any heavy work.
  try:
    inputs.check_paths(cfg)
    build.check_init_paths(cfg.model, cfg.init)
  except FileNotFoundError as e:
    print(f"jaxris.train: error: {e}", file=sys.stderr)
    return 2
  os.makedirs(workdir, exist_ok=True)
  is_main = jax.process_index() == 0

  # --- Mesh.
  mesh = make_mesh(tuple(cfg.mesh))

  data_parallel = mesh.shape["data"] * mesh.shape["fsdp"]
  micro_batch = cfg.batch_size // cfg.grad_accum
  if cfg.batch_size % cfg.grad_accum or micro_batch % data_parallel:
    print(f"jaxris.train: error: batch_size {cfg.batch_size} / grad_accum {cfg.grad_accum} must be a multiple of "
          f"the data x fsdp mesh size {data_parallel} (mesh {dict(mesh.shape)}); set --config.mesh or the batch size",
          file=sys.stderr)
    return 2

  # --- Input.
  train_examples = inputs.train_examples(cfg)
  preprocess = inputs.preprocess_for(cfg)
  steps_per_epoch = max(len(train_examples) // cfg.batch_size, 1)
  total_steps = cfg.steps or cfg.epochs * steps_per_epoch  # optimizer steps
  total_micro = total_steps * cfg.grad_accum

  # --- Model, sharded state, update step.
  model, model_cfg, tokenizer = build.build(cfg.model, cfg.init, cfg.seed)
  # The fields the loss reads (LOSS_INPUTS: the bridge's no-target flags, ...) and the model's inputs.
  model_inputs = model.BATCH_INPUTS
  batch_keys = tuple(dict.fromkeys(getattr(model, "LOSS_INPUTS", ("mask",)) + model_inputs))
  oracle = bool(getattr(model_cfg, "oracle", False))
  if oracle and is_main:
    print(f"jaxris.train: ORACLE recipe: {cfg.name} reads the annotated category of every target (sparse_query="
          "'gt_category'), at evaluation too; its numbers are not referring segmentation results", file=sys.stderr)
  graphdef, params, rest = split_params(model)
  del model
  problem = lr_scale_problem(tuple(cfg.optimizer.get("lr_scale", ())), params)
  if problem:
    print(f"jaxris.train: error: {problem}", file=sys.stderr)
    return 2
  trainer = create_trainer(cfg, graphdef, params, rest, mesh, steps_per_epoch, total_steps)
  state = trainer.state
  forward = ev.forward_fn(graphdef, rest)
  evaluate = lambda params, split, **kw: ev.evaluate_split(
      forward, params, inputs.eval_examples(cfg, split), preprocess, tokenizer, micro_batch, cfg.threshold, mesh,
      model_inputs=model_inputs, resize=cfg.eval_resize, desc=f"eval {split}", **kw)

  # --- Checkpoint: resume from the newest one in workdir.
  checkpointer = ckpt.Checkpointer(workdir, cfg.keep_checkpoints)
  start = checkpointer.latest_step() or 0
  if start:
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), trainer.abstract,
                          trainer.shardings)
    state = checkpointer.restore(start, target)
    if is_main:
      print(f"resumed from {checkpointer.directory}/{start}")
  if is_main:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(cfg.to_json_best_effort(indent=2))

  # --- Loop.
  ds = make_dataset(train_examples, preprocess, tokenizer, micro_batch, train=True, seed=cfg.seed,
                    train_sentences=cfg.data.train_sentences, skip_batches=start)
  batches = ds.as_numpy_iterator()
  log = open(os.path.join(workdir, "metrics.jsonl"), "a") if is_main else None
  writer = _summary_writer(workdir) if is_main else None
  eval_every = cfg.eval_every or steps_per_epoch * cfg.grad_accum
  bar = tqdm(total=total_micro, initial=start, desc="train", unit="step", disable=not is_main, dynamic_ncols=True)
  t_last, n_last, last_good = time.perf_counter(), start, start
  preemption = PreemptionWatch()
  for step in range(start + 1, total_micro + 1):
    host = next(batches)
    state, metrics = trainer.step(state, global_batch({k: host[k] for k in batch_keys}, mesh))
    bar.update(1)
    if step % cfg.log_every == 0 or step == total_micro:
      metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
      if metrics["skipped"] > cfg.skip_nonfinite:
        bar.close()
        print(f"jaxris.train: error: {int(metrics['skipped'])} updates had a non-finite loss or gradient by step "
              f"{step} (last loss {metrics['loss']}), more than skip_nonfinite={cfg.skip_nonfinite}; stopping. "
              f"They were not applied; the last checkpoint (step {last_good}) is kept in {checkpointer.directory}",
              file=sys.stderr)
        checkpointer.close()
        preemption.close()
        return 3
      now = time.perf_counter()
      metrics.update(step=step, lr=float(trainer.schedule(step // cfg.grad_accum)),
                     images_per_s=(step - n_last) * micro_batch / (now - t_last))
      t_last, n_last = now, step
      bar.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.2e}", img_s=f"{metrics['images_per_s']:.1f}")
      _log(log, writer, metrics)
    preempted = preemption.should_stop(step)
    if step % cfg.checkpoint_every == 0 or step == total_micro or preempted:
      stall = checkpointer.save(step, state, wait=preempted)
      last_good = step
      _log(log, writer, {"step": step, "checkpoint_stall_s": stall})
    if preempted or (stop_after is not None and step >= stop_after):
      bar.close()
      checkpointer.close()
      preemption.close()
      if preempted and is_main:
        print(f"jaxris.train: stopped by SIGTERM after step {step}; checkpoint {checkpointer.directory}/{step}. "
              f"Run the same command again to resume.")
      return 0
    if eval_every and step % eval_every == 0 and step != total_micro and cfg.data.eval_splits:
      split = cfg.data.eval_splits[0]
      result = evaluate(_eval_params(state), split, limit=cfg.eval_examples)
      _log(log, writer, {"step": step, **{f"{split}/{k}": v for k, v in result.items() if k in ev.REPORTED}})
      bar.write(f"step {step}: {split} " + ", ".join(f"{k} {result[k]:.2f}" for k in ev.REPORTED))
  bar.close()
  checkpointer.close()
  preemption.close()

  # --- Export, final evaluation, overlays.
  model_dir = export_model(os.path.join(workdir, "model"), build.weights_family(cfg.model), model_cfg.to_dict(),
                           {**_eval_params(state), **buffers(rest)}, _vocab_file(tokenizer), recipe_of(cfg, preprocess))
  results = {}
  for split in cfg.data.eval_splits:
    results[split] = evaluate(_eval_params(state), split, type_of=inputs.expression_type_of(cfg))
    ev.write_result(workdir, split, results[split], oracle=oracle)
    _log(log, writer, {"step": total_micro, **{f"{split}/{k}": v for k, v in results[split].items()
                                               if k in ev.REPORTED}})
  if is_main:
    print(f"\nweights: {model_dir}\n")
    print(ev.format_report(results, f"{cfg.name} on {cfg.data.name}"))
    if cfg.predict_examples and cfg.data.eval_splits and not oracle:  # an oracle cannot take free text
      paths = write_examples(model_dir, inputs.eval_examples(cfg, cfg.data.eval_splits[0])[:cfg.predict_examples],
                             os.path.join(workdir, "predictions"))
      print(f"\noverlays: {os.path.dirname(paths[0])}")
  return 0


def main(argv) -> int:
  from absl import flags
  f = flags.FLAGS
  explicit = (f.coordinator, f.num_processes, f.process_id)
  if any(v is not None for v in explicit):
    if any(v is None for v in explicit):
      print("jaxris.train: error: --coordinator, --num_processes and --process_id go together", file=sys.stderr)
      return 2
    _cpu_collectives()
    jax.distributed.initialize(f.coordinator, num_processes=f.num_processes, process_id=f.process_id)
  elif f.distributed:
    _cpu_collectives()
    jax.distributed.initialize()  # coordinator and process ids from the cluster (TPU pod, SLURM, ...)
  return train(f.config, f.workdir, stop_after=f.stop_after)


def _cpu_collectives():
  """Processes on CPU talk through gloo (XLA:CPU has no cross-process collectives by default); the
  setting touches only the CPU backend, so GPU and TPU runs are unaffected."""
  jax.config.update("jax_cpu_collectives_implementation", "gloo")


def _vocab_file(tokenizer) -> str:
  """The file a tokenizer reads (BERT's vocab.txt or BEiT-3's sentencepiece model), copied into the export."""
  return getattr(tokenizer, "vocab_file", None) or tokenizer.spm_file


def _eval_params(state):
  return state.get("ema", state["params"])


def _summary_writer(workdir):
  import tensorflow as tf
  tf.config.set_visible_devices([], "GPU")
  return tf.summary.create_file_writer(os.path.join(workdir, "tb"))


def _log(log, writer, metrics: dict) -> None:
  if log is None:
    return
  log.write(json.dumps(metrics) + "\n")
  log.flush()
  with writer.as_default():
    for k, v in metrics.items():
      if k != "step":
        import tensorflow as tf
        tf.summary.scalar(k, v, step=metrics["step"])
  writer.flush()


def _define_flags():
  from absl import flags
  from ml_collections import config_flags

  config_flags.DEFINE_config_file("config", None, "recipe file: configs/<recipe>.py[:key=value,...]",
                                  lock_config=False)
  flags.DEFINE_string("workdir", None, "output directory; rerunning the same command resumes from it")
  flags.DEFINE_bool("distributed", False, "call jax.distributed.initialize() first, which finds the coordinator "
                    "and process ids in the cluster's environment (TPU pods, SLURM, ...); every process runs the "
                    "same command and reads its own share of each batch")
  flags.DEFINE_string("coordinator", None, "HOST:PORT of process 0, for a run whose processes are started by hand "
                      "(with --num_processes and --process_id)")
  flags.DEFINE_integer("num_processes", None, "number of processes of a run started by hand")
  flags.DEFINE_integer("process_id", None, "this process's index in [0, num_processes)")
  flags.DEFINE_integer("stop_after", None, "leave after this step with a checkpoint, as a preempted job would "
                       "(for testing resumption; SIGTERM does the same at any step)")
  flags.mark_flags_as_required(["config", "workdir"])


if __name__ == "__main__":
  from absl import app

  sys.argv = resolve_config_path(sys.argv)
  _define_flags()
  app.run(lambda argv: sys.exit(main(argv)))
