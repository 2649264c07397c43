"""Training: one step is the same on every mesh, parameters really are split, and resuming is exact."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxris.configs import dit_config
from jaxris.models.bert import BertConfig
from jaxris.models.functional import split_params
from jaxris.models.ris.dit_sam import RisConfig, RisSam
from jaxris.models.sam.sam import sam_config
from jaxris.sharding import global_batch, make_mesh
from jaxris.train import create_trainer, train
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
  cfg = dit_config("ldit", arg="refshapes")
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


def _one_step(mesh_shape, cfg):
  devices = jax.devices()[:int(np.prod(mesh_shape))]
  mesh = make_mesh(mesh_shape, devices)
  graphdef, params, rest = split_params(_tiny_model())
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


def _refshapes_run(**overrides):
  cfg = dit_config("ldit", arg="refshapes")
  cfg.model.sam_overrides = dict(img_size=64, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                                 global_attn_indexes=(1,), window_size=4)
  cfg.model.prompt_embed_dim = 32
  cfg.model.decoder_mlp_dim = 64
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
  lines = open(os.path.join(resumed, "metrics.jsonl")).read().splitlines()
  assert len([l for l in lines if '"loss"' in l]) == 4  # steps 1-2 before, 3-4 after the restart


def test_missing_weights_fail_fast(tmp_path, capsys):
  cfg = dit_config("ldit", arg="")
  cfg.init.sam = str(tmp_path / "no_sam")
  cfg.data.name = "refshapes"
  assert train(cfg, str(tmp_path / "w")) == 2
  err = capsys.readouterr().err
  assert "convert/sam.py" in err and str(tmp_path / "no_sam") in err
  cfg = dit_config("ldit", arg="")
  cfg.data.root = str(tmp_path / "no_refcoco")
  assert train(cfg, str(tmp_path / "w")) == 2
  assert "refs(unc).p" in capsys.readouterr().err
