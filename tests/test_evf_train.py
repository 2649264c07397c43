"""EVF-SAM through jaxris.train / jaxris.evaluate: the recipe builds, trains, exports and re-evaluates."""

import json
import os

import numpy as np
import pytest

from jaxris.configs import evf_sam_vith
from jaxris.train import lr_schedule, train


def _tiny_run(**overrides):
  cfg = evf_sam_vith.get_config("refshapes")
  cfg.model.sam_overrides = dict(img_size=64, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                                 global_attn_indexes=(1,), window_size=4)
  cfg.model.prompt_embed_dim = 32
  cfg.model.decoder_mlp_dim = 64
  cfg.init.sam_decoder = ""  # a 32-wide decoder: no SAM decoder fits it, it starts random
  cfg.model.beit3_overrides = dict(encoder_embed_dim=32, encoder_attention_heads=2, encoder_ffn_embed_dim=64,
                                   encoder_layers=2, img_size=32, patch_size=8, max_source_positions=32)
  cfg.data.image_size = 64
  cfg.data.evf_size = 32
  cfg.data.refshapes = dict(image_size=64, num_train=16, num_val=4, num_testA=4, num_testB=4)
  cfg.data.eval_splits = ("val",)
  cfg.batch_size = 4
  cfg.steps = 2
  cfg.log_every = 1
  cfg.eval_every = 1000
  cfg.predict_examples = 0
  cfg.mesh = (2, 2, 1)
  cfg.update(overrides)
  return cfg


def test_evf_refshapes_trains_exports_and_evaluates(tmp_path):
  from jaxris.inference import evaluation as ev
  from jaxris.inference.export import load_trained
  from jaxris.data.inputs import eval_examples, expression_type_of, preprocess_for
  from jaxris.models.functional import split_params
  from jaxris.sharding import make_mesh

  workdir = str(tmp_path / "evf")
  cfg = _tiny_run(predict_examples=1)
  assert train(cfg, workdir) == 0
  assert len(os.listdir(os.path.join(workdir, "predictions"))) == 1  # overlays through EvfPredictor
  lines = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  losses = [l["loss"] for l in lines if "loss" in l]
  assert len(losses) == 2 and all(np.isfinite(losses))
  written = json.load(open(os.path.join(workdir, "eval_val.json")))
  assert set(written) == set(ev.REPORTED) | {"by_type"}  # RefShapes: also mIoU per expression type
  # every expression is counted under exactly one type
  assert sum(r["count"] for r in written["by_type"].values()) == sum(len(e["sentences"]) for e in eval_examples(cfg, "val"))

  # The export reads back (EVF family, MiniLM's vocab.txt) and re-scores val to the same numbers.
  model, tokenizer = load_trained(os.path.join(workdir, "model"))
  assert type(model).__name__ == "EvfSam" and model.cfg.beit3.encoder_layers == 2
  graphdef, params, rest = split_params(model)
  result = ev.evaluate_split(ev.forward_fn(graphdef, rest), params, eval_examples(cfg, "val"), preprocess_for(cfg),
                             tokenizer, 4, cfg.threshold, make_mesh((1, 1, 1)), model_inputs=type(model).BATCH_INPUTS,
                             resize="logits", type_of=expression_type_of(cfg))
  for k in ev.REPORTED:
    assert result[k] == pytest.approx(written[k], abs=1e-6), k
  for t, r in written["by_type"].items():
    assert result["by_type"][t]["mIoU"] == pytest.approx(r["mIoU"], abs=1e-6), t


def test_evf_frozen_parts_stay_fixed(tmp_path):
  cfg = _tiny_run(freeze=("visual_model.image_encoder", "visual_model.prompt_encoder"))
  workdir = str(tmp_path / "frozen")
  assert train(cfg, workdir, stop_after=2) == 0  # leaves before the export: compare the checkpoint instead
  from jaxris import checkpoint as ckpt
  restored = ckpt.Checkpointer(workdir, 2).restore(2, None)
  params = restored["params"]
  # Same seed, same init: an untrained build gives the starting point.
  from jaxris import build
  from jaxris.models.functional import split_params
  model, _, _ = build.build(cfg.model, cfg.init, cfg.seed)
  _, init, _ = split_params(model)
  moved = {k for k in init if not np.array_equal(np.asarray(params[k]), np.asarray(init[k]))}
  assert moved and not {k for k in moved if k.startswith(("visual_model.image_encoder.", "visual_model.prompt_encoder."))}
  assert any(k.startswith("mm_extractor.beit3.") for k in moved) and any(k.startswith("text_hidden_fcs.") for k in moved)


def test_linear_schedule_warms_up_then_decays_to_min_lr():
  cfg = evf_sam_vith.get_config()
  schedule = lr_schedule(cfg.optimizer, steps_per_epoch=1, total_steps=1100)
  assert float(schedule(0)) == 0.0
  assert float(schedule(50)) == pytest.approx(0.5e-4)
  assert float(schedule(100)) == pytest.approx(1e-4)
  assert float(schedule(600)) == pytest.approx(0.5e-4)
  assert float(schedule(1100)) == pytest.approx(0.0, abs=1e-12)


def test_missing_evf_inputs_fail_fast(tmp_path, capsys):
  cfg = evf_sam_vith.get_config()
  cfg.init.beit3 = str(tmp_path / "no_beit3")
  cfg.init.sam = ""
  cfg.data.name = "refshapes"
  assert train(cfg, str(tmp_path / "w")) == 2
  err = capsys.readouterr().err
  assert "jaxris.convert.beit3" in err and str(tmp_path / "no_beit3") in err


def test_beit3_multiway_experts_get_tensor_parallel_rules():
  # The names are the model's own (the FFN experts are ffn.A.fc1, not ffn.fc1.A, which the old
  # regex table matched and this test asserted, so two thirds of BEiT-3 had no tensor split).
  from flax import nnx
  from jax.sharding import PartitionSpec as P

  from jaxris.build import evf_config
  from jaxris.models.ris.evf import EvfSam
  from jaxris.sharding import make_mesh, model_plan
  cfg = evf_sam_vith.get_config("refshapes")
  model = nnx.eval_shape(lambda: EvfSam(evf_config(cfg.model, vocab_size=1000), rngs=nnx.Rngs(0)))
  plan = model_plan(model, make_mesh((1, 2, 4)), cfg.sharding_rules)
  assert not plan.unnamed, plan.unnamed
  prefix = "mm_extractor.beit3.encoder.layers.0."
  for expert in "AB":
    assert plan.specs[f"{prefix}self_attn.q_proj.{expert}.kernel"] == P("fsdp", "tensor")
    assert plan.specs[f"{prefix}self_attn.q_proj.{expert}.bias"] == P("tensor")
    assert plan.specs[f"{prefix}self_attn.out_proj.{expert}.kernel"] == P("tensor", "fsdp")
    assert plan.specs[f"{prefix}ffn.{expert}.fc1.kernel"] == P("fsdp", "tensor")
    assert plan.specs[f"{prefix}ffn.{expert}.fc2.kernel"] == P("tensor", "fsdp")
