"""Training: one step is the same on every mesh, parameters really are split, and resuming is exact."""

import contextlib
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxris.configs import ldit_vitb
from jaxris.models.bert import BertConfig
from jaxris.models.functional import split_params
from jaxris.models.ris.dit_sam import RisConfig, RisSam
from jaxris.models.sam.sam import sam_config
from jaxris.sharding import global_batch, make_mesh
from jaxris.train import create_trainer, lr_schedule, train
from jaxris.weights import store


def _tiny_model():
  sam = sam_config("vit_b", img_size=64, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                   global_attn_indexes=(1,), window_size=4, out_chans=32)
  import dataclasses
  sam = dataclasses.replace(sam, prompt_embed_dim=32, decoder_mlp_dim=64)
  bert = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                    max_position_embeddings=32)
  return RisSam(RisConfig(scheme="ldit", sam=sam, bert=bert, bert_layer=-1), rngs=nnx.Rngs(0))


def _config(**overrides):
  cfg = ldit_vitb.get_config("refshapes")
  cfg.ema_decay = 0.999
  cfg.optimizer.warmup_epochs = 0.0
  # Adam's first step is lr * g / (|g| + eps): with the official eps (1e-9) it is lr * sign(g), so
  # gradients that are zero up to rounding would flip signs between meshes. A larger eps keeps
  # the update a smooth function of the gradient, so the comparison tests the sharding only.
  cfg.optimizer.eps = 1e-3
  cfg.freeze = ()
  cfg.update(overrides)
  return cfg


def _batch(n=8, size=64):
  rng = np.random.default_rng(0)
  return {"image": rng.standard_normal((n, size, size, 3)).astype(np.float32),
          "mask": (rng.random((n, size, size)) > 0.7).astype(np.float32),
          "input_ids": rng.integers(1, 100, (n, 20)).astype(np.int32),
          "attention_mask": (np.arange(20)[None] < rng.integers(3, 20, (n, 1))).astype(np.int32)}


@contextlib.contextmanager
def _little_optimisation():
  """XLA without most of its optimisations: a test that runs one step of a tiny model spends nearly all
  its time compiling it (the one-step tests of this module alone: 193 s against 251 s)."""
  before = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  try:
    yield
  finally:
    jax.config.update("jax_disable_most_optimizations", before)


def _one_step(mesh_shape, cfg):
  devices = jax.devices()[:int(np.prod(mesh_shape))]
  mesh = make_mesh(mesh_shape, devices)
  graphdef, params, rest = split_params(_tiny_model())
  with _little_optimisation():
    trainer = create_trainer(cfg, graphdef, params, rest, mesh, steps_per_epoch=10, total_steps=100)
    state, metrics = trainer.step(trainer.state, global_batch(_batch(), mesh))
  return state, metrics


@pytest.fixture(scope="module")
def single_device():
  return _one_step((1, 1, 1), _config())


@pytest.mark.parametrize("mesh_shape", [(8, 1, 1), (2, 4, 1), (1, 4, 2)])
def test_one_step_matches_single_device(single_device, mesh_shape):
  assert len(jax.devices()) == 8, "tests run on 8 simulated CPU devices (tests/conftest.py)"
  ref_state, ref_metrics = single_device
  state, metrics = _one_step(mesh_shape, _config())
  np.testing.assert_allclose(float(metrics["loss"]), float(ref_metrics["loss"]), rtol=1e-5)
  for name, ref in ref_state["params"].items():
    np.testing.assert_allclose(np.asarray(state["params"][name]), np.asarray(ref), atol=1e-5, rtol=0, err_msg=name)
  for name in ("visual_encoder.probs.0.kernel", "visual_encoder.blocks.1.attn.qkv.kernel", "text_proj.kernel",
               "lang_encoder.encoder.layer.1.output.dense.kernel", "mask_decoder.output_upscaling.0.kernel"):
    assert np.any(np.asarray(state["params"][name]) != np.asarray(_tiny_params()[name])), f"{name} did not move"
  for name in ("visual_encoder.blocks.0.mlp.lin1.kernel", "lang_encoder.encoder.layer.0.intermediate.dense.kernel"):
    spec = state["params"][name].sharding.spec
    if mesh_shape == (1, 4, 2):
      assert tuple(spec) == ("fsdp", "tensor"), (name, spec)
    elif mesh_shape == (2, 4, 1):
      assert "fsdp" in tuple(spec), (name, spec)
  if mesh_shape == (1, 4, 2):
    shard = state["params"]["visual_encoder.blocks.0.mlp.lin1.kernel"].addressable_shards[0].data
    assert shard.shape == (32 // 4, 128 // 2)  # really split over fsdp x tensor


_PARAMS = {}


def _tiny_params():
  if not _PARAMS:
    _PARAMS.update(split_params(_tiny_model())[1])
  return _PARAMS


def test_frozen_modules_do_not_move():
  state, _ = _one_step((1, 1, 1), _config(freeze=("visual_encoder", "lang_encoder")))
  init = _tiny_params()
  moved = {name for name, value in state["params"].items() if not np.array_equal(np.asarray(value), init[name])}
  assert not {n for n in moved if n.startswith(("visual_encoder.", "lang_encoder."))}
  assert {"text_proj.kernel", "mask_decoder.transformer.layers.0.self_attn.q_proj.kernel"} <= moved


def test_lr_scale_multiplies_the_update_of_its_modules(single_device):
  """optimizer.lr_scale: the parameters under a prefix move by exactly `scale` times the step of the
  same run without it (Adam's step is linear in the learning rate), the others are untouched, and
  a prefix that names no parameter is refused."""
  base, _ = single_device  # the same recipe without lr_scale (its EMA does not touch the parameters)
  cfg = _config()
  cfg.optimizer.lr_scale = (("mask_decoder.transformer", 0.25), ("mask_decoder", 0.0))
  scaled, _ = _one_step((1, 1, 1), cfg)
  init = _tiny_params()
  for name, value in base["params"].items():
    step, got = np.asarray(value) - init[name], np.asarray(scaled["params"][name]) - init[name]
    scale = 0.25 if name.startswith("mask_decoder.transformer.") else 0.0 if name.startswith("mask_decoder.") else 1.0
    ulp = 2 * float(np.spacing(np.abs(np.asarray(init[name])).max()))  # the float32 rounding of p + step
    np.testing.assert_allclose(got, scale * step, rtol=0, atol=ulp, err_msg=name)
  assert np.any(np.asarray(base["params"]["mask_decoder.transformer.layers.0.self_attn.q_proj.kernel"])
                != init["mask_decoder.transformer.layers.0.self_attn.q_proj.kernel"])
  cfg.optimizer.lr_scale = (("mask_decodr", 0.5),)
  with pytest.raises(ValueError, match="mask_decodr"):
    _one_step((1, 1, 1), cfg)


def test_lr_scale_typo_stops_the_run(tmp_path, capsys):
  cfg = _refshapes_run()
  cfg.optimizer.lr_scale = (("mask_decodr", 0.5),)
  assert train(cfg, str(tmp_path / "w")) == 2
  err = capsys.readouterr().err
  assert "optimizer.lr_scale" in err and "mask_decodr" in err and "'mask_decoder'" in err


def _refshapes_run(**overrides):
  cfg = ldit_vitb.get_config("refshapes")
  cfg.model.sam_overrides = dict(img_size=64, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                                 global_attn_indexes=(1,), window_size=4)
  cfg.model.prompt_embed_dim = 32
  cfg.model.decoder_mlp_dim = 64
  cfg.init.sam_decoder = ""  # a 32-wide decoder: no SAM decoder fits it, it starts random
  cfg.data.image_size = 64
  cfg.data.refshapes = dict(image_size=64, num_train=32, num_val=4, num_testA=4, num_testB=4)
  cfg.batch_size = 4
  cfg.steps = 4
  cfg.checkpoint_every = 2
  cfg.log_every = 1
  cfg.eval_every = 1000
  cfg.predict_examples = 0
  cfg.data.eval_splits = ("val",)
  cfg.ema_decay = 0.99
  cfg.freeze = ()
  cfg.mesh = (2, 2, 1)  # sharded, as a real run: batch 4 over data x fsdp
  cfg.update(overrides)
  return cfg


def test_resume_after_preemption_is_exact(tmp_path):
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  assert train(_refshapes_run(), straight) == 0
  assert train(_refshapes_run(), resumed, stop_after=2) == 0
  assert sorted(os.listdir(os.path.join(resumed, "checkpoints"))) == ["2"]
  assert train(_refshapes_run(), resumed) == 0
  a = store.load(os.path.join(straight, "model"), "dit")[1]
  b = store.load(os.path.join(resumed, "model"), "dit")[1]
  assert a.keys() == b.keys()
  for name in a:
    np.testing.assert_array_equal(a[name], b[name], err_msg=name)
  assert os.path.isfile(os.path.join(straight, "eval_val.json"))
  _check_predictor_reads_the_recipe(os.path.join(straight, "model"), _refshapes_run())
  lines = open(os.path.join(resumed, "metrics.jsonl")).read().splitlines()
  assert len([l for l in lines if '"loss"' in l]) == 4  # steps 1-2 before, 3-4 after the restart


def test_missing_weights_fail_fast(tmp_path, capsys):
  cfg = ldit_vitb.get_config()
  cfg.init.sam = str(tmp_path / "no_sam")
  cfg.data.name = "refshapes"
  assert train(cfg, str(tmp_path / "w")) == 2
  err = capsys.readouterr().err
  assert "jaxris.convert.sam" in err and str(tmp_path / "no_sam") in err
  cfg = ldit_vitb.get_config()
  cfg.data.root = str(tmp_path / "no_refcoco")
  assert train(cfg, str(tmp_path / "w")) == 2
  assert "refs(unc).p" in capsys.readouterr().err


def test_ema_is_updated_once_per_optimizer_step():
  """Under gradient accumulation the EMA follows optimizer steps: after 2 optimizer steps of 2 micro-steps
  each it holds exactly two EMA updates (the old code took four, the extra ones towards unchanged params)."""
  cfg = _config(grad_accum=2, ema_decay=0.9997)
  graphdef, params, rest = split_params(_tiny_model())
  mesh = make_mesh((1, 1, 1), jax.devices()[:1])
  trainer = create_trainer(cfg, graphdef, params, rest, mesh, steps_per_epoch=10, total_steps=100)
  host = lambda params: {k: np.array(v) for k, v in params.items()}  # copies: the step donates its input
  state, seen = trainer.state, [host(trainer.state["params"])]
  for _ in range(4):
    state, _ = trainer.step(state, global_batch(_batch(), mesh))
    seen.append(host(state["params"]))
  p0, p2, p4 = seen[0], seen[2], seen[4]
  assert all(np.array_equal(seen[1][k], p0[k]) for k in p0)  # the first micro-step only accumulates
  d0, d1 = min(0.9997, 1 / 10), min(0.9997, 2 / 11)  # the official warm-up of the decay, t = 0 and 1
  for name in ("text_proj.kernel", "visual_encoder.blocks.0.mlp.lin1.kernel"):
    e1 = d0 * np.asarray(p0[name]) + (1 - d0) * np.asarray(p2[name])
    expected = d1 * e1 + (1 - d1) * np.asarray(p4[name])
    np.testing.assert_allclose(np.asarray(state["ema"][name]), expected, rtol=1e-6, atol=1e-7, err_msg=name)


def _official_lr(opt, step, steps_per_epoch, total_steps):
  """The schedules as the official code bases write them (DIT's warm-up + cosine and milestones, LISA's
  WarmupDecayLR), in plain Python: what the optax schedules of jaxris.train must reproduce."""
  warmup = int(opt.warmup_steps or round(opt.warmup_epochs * steps_per_epoch))
  if step < warmup:
    return opt.warmup_lr + step * (opt.lr - opt.warmup_lr) / warmup
  progress = min(max((step - warmup) / max(total_steps - warmup, 1), 0.0), 1.0)
  if opt.schedule == "wcosine":
    return opt.min_lr + 0.5 * (opt.lr - opt.min_lr) * (1 + np.cos(np.pi * progress))
  if opt.schedule == "step":
    return opt.lr * opt.gamma ** sum(step >= m * steps_per_epoch for m in opt.milestones)
  return opt.lr + (opt.min_lr - opt.lr) * progress


@pytest.mark.parametrize("schedule", ["wcosine", "step", "linear"])
@pytest.mark.parametrize("warmup_epochs", [0.0, 3.0])
def test_schedules_follow_the_official_formulas(schedule, warmup_epochs):
  opt = ldit_vitb.get_config().optimizer
  opt.schedule, opt.warmup_epochs, opt.min_lr = schedule, warmup_epochs, 1e-6
  steps_per_epoch, total = 100, 4000  # 40 epochs, milestones at epochs 30 and 35
  schedule_fn = lr_schedule(opt, steps_per_epoch, total)
  for step in (0, 1, 150, 299, 300, 301, 1000, 2999, 3000, 3001, 3499, 3500, 3999, 4000, 4500):
    want = _official_lr(opt, step, steps_per_epoch, total)
    assert float(schedule_fn(step)) == pytest.approx(want, rel=1e-5, abs=1e-12), (schedule, step)


def _check_predictor_reads_the_recipe(model_dir, cfg):
  """The export records the trained recipe; RisPredictor takes its text length, preprocessing and
  threshold from there (they were hard-coded to 20 tokens and 0.35), and is freed when dropped."""
  import gc
  import json
  import weakref

  from jaxris.inference.export import RECIPE_FILE
  from jaxris.inference.ris_predictor import RisPredictor

  recipe = json.load(open(os.path.join(model_dir, RECIPE_FILE)))
  assert recipe["threshold"] == cfg.threshold and recipe["max_tokens"] == cfg.model.max_tokens
  assert recipe["preprocess"]["size"] == cfg.data.image_size and recipe["config"]["name"] == cfg.name
  image = np.random.default_rng(0).integers(0, 255, (48, 80, 3)).astype(np.uint8)
  predictor = RisPredictor(model_dir)
  assert predictor.tokenizer.max_length == cfg.model.max_tokens and predictor.threshold == cfg.threshold
  logits = predictor.predict(image, "the red circle")
  ref = weakref.ref(predictor)
  del predictor
  gc.collect()
  assert ref() is None, "the jit cache keeps the predictor alive"
  # A recipe trained with another threshold: the predictor's logits move by the difference of the cuts.
  recipe.update(threshold=0.5)
  json.dump(recipe, open(os.path.join(model_dir, RECIPE_FILE), "w"))
  other = RisPredictor(model_dir)
  assert other.threshold == 0.5
  cut = np.log(cfg.threshold / (1 - cfg.threshold))  # 0.35 -> -0.62; 0.5 -> 0
  np.testing.assert_allclose(other.predict(image, "the red circle"), logits + cut, rtol=0, atol=1e-5)
  # The one loader of the CLI, the demo and the overlays takes the export for a DIT model, and its
  # answer has no no-target verdict.
  from jaxris.inference.text_predictors import load_text_predictor
  kind, loaded = load_text_predictor(model_dir)
  assert kind == "dit" and isinstance(loaded, RisPredictor)
  said, no_target = loaded.predict_with_target(image, "the red circle")
  assert no_target is None
  np.testing.assert_allclose(said, logits + cut, rtol=0, atol=1e-5)
  recipe.update(max_tokens=12)
  json.dump(recipe, open(os.path.join(model_dir, RECIPE_FILE), "w"))
  assert RisPredictor(model_dir).tokenizer.max_length == 12


def test_nonfinite_updates_are_skipped_and_counted():
  """A batch giving a NaN loss leaves parameters, optimizer state and EMA unchanged and counts one
  skipped update; the next good batch trains as usual (jaxris.train stops once the count exceeds
  cfg.skip_nonfinite, keeping the last checkpoint, which the skipped update never touched)."""
  cfg = _config(ema_decay=0.99)
  graphdef, params, rest = split_params(_tiny_model())
  mesh = make_mesh((1, 1, 1), jax.devices()[:1])
  trainer = create_trainer(cfg, graphdef, params, rest, mesh, steps_per_epoch=10, total_steps=100)
  host = lambda tree: jax.tree.map(np.array, tree)  # copies: the step donates its input
  before = host(trainer.state)
  bad = _batch()
  bad["image"][0, 0, 0, 0] = np.nan
  state, metrics = trainer.step(trainer.state, global_batch(bad, mesh))
  assert not np.isfinite(float(metrics["loss"])) and int(metrics["skipped"]) == 1 and int(state["step"]) == 1
  after = host(state)
  for part in ("params", "opt_state", "ema"):
    for a, b in zip(jax.tree.leaves(after[part]), jax.tree.leaves(before[part])):
      np.testing.assert_array_equal(a, b)
  state, metrics = trainer.step(state, global_batch(_batch(), mesh))
  assert np.isfinite(float(metrics["loss"])) and int(metrics["skipped"]) == 1
  assert not np.array_equal(np.asarray(state["params"]["text_proj.kernel"]), before["params"]["text_proj.kernel"])
  assert _refshapes_run().skip_nonfinite == 0  # every recipe declares it
