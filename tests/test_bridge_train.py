"""The SAM+CLIP bridge through jaxris.train / evaluate / predict on RefShapes' no-target splits (tiny sizes),
the oracle's refusal, the build's start-up messages and the no-target data."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from jaxris.configs import bridge_vitb
from jaxris.data import refshapes
from jaxris.train import train

TINY_CLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                 patch_size=8)  # a 4x4 CLIP grid
TINY_SIZES = dict(clip_sfp_dim=32, pixel_layers=1, pixel_heads=4, pixel_points=2, pixel_ffn=64, dfam_queries=4,
                  dfam_heads=4, dfam_ffn=64, dfam_layers=2, txt_heads=4, txt_ffn=64, clip_text_dim=16, num_classes=6,
                  num_category_ids=5)


def _tiny(arg="refshapes,no_target=1", **overrides):
  cfg = bridge_vitb.get_config(arg)
  cfg.model.sam_overrides = dict(img_size=64, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                                 global_attn_indexes=(1,), window_size=4)   # an 8x8 SAM grid
  cfg.model.prompt_embed_dim = 64
  cfg.model.decoder_mlp_dim = 64
  cfg.model.clip_overrides = TINY_CLIP
  cfg.model.bridge_sizes = TINY_SIZES
  cfg.init.sam_decoder = ""  # a 64-wide decoder: no SAM decoder fits it, it starts random
  cfg.data.image_size = 64
  cfg.data.refshapes = dict(image_size=64, num_train=16, num_val=6, num_testA=4, num_testB=4, no_target_fraction=0.5)
  cfg.data.eval_splits = ("val_nt",)
  cfg.loss_weights.num_points = 64
  cfg.loss_weights.matcher = "scipy"  # compiles faster than the JAX solver (the same assignment: test_bridge_losses)
  cfg.batch_size = 4
  cfg.steps = 2
  cfg.log_every = 1
  cfg.eval_every = 1000
  cfg.predict_examples = 0
  cfg.mesh = (1, 1, 1)
  cfg.update(overrides)
  return cfg


def _export(cfg, out):
  """An untrained export of `cfg` (what jaxris.train writes at the end), without training."""
  from jaxris import build
  from jaxris.data.inputs import preprocess_for
  from jaxris.inference.export import export_model, recipe_of
  from jaxris.models.functional import buffers, split_params
  model, model_cfg, tokenizer = build.build(cfg.model, cfg.init, cfg.seed)
  _, params, rest = split_params(model)
  return export_model(out, build.weights_family(cfg.model), model_cfg.to_dict(), {**params, **buffers(rest)},
                      tokenizer.vocab_file, recipe_of(cfg, preprocess_for(cfg)))


def test_bridge_trains_exports_evaluates_and_predicts(tmp_path):
  from jaxris import predict
  from jaxris.data.inputs import eval_examples, expression_type_of, preprocess_for
  from jaxris.inference import evaluation as ev
  from jaxris.inference.export import load_trained
  from jaxris.models.functional import split_params
  from jaxris.sharding import make_mesh

  workdir = str(tmp_path / "bridge")
  cfg = _tiny()
  assert train(cfg, workdir) == 0
  losses = [l["loss"] for l in map(json.loads, open(os.path.join(workdir, "metrics.jsonl"))) if "loss" in l]
  assert len(losses) == 2 and all(np.isfinite(losses))
  written = json.load(open(os.path.join(workdir, "eval_val_nt.json")))
  assert set(ev.REPORTED + ev.NO_TARGET) <= set(written) and "oracle" not in written
  examples = eval_examples(cfg, "val_nt")
  assert any(e["no_target"] for e in examples) and not all(e["no_target"] for e in examples)

  # The export reads back (bridge family) and re-scores the no-target split to the same numbers.
  model, tokenizer = load_trained(os.path.join(workdir, "model"))
  assert type(model).__name__ == "BridgeSam" and model.cfg.no_target_head and not model.cfg.oracle
  graphdef, params, rest = split_params(model)
  result = ev.evaluate_split(ev.forward_fn(graphdef, rest), params, examples, preprocess_for(cfg), tokenizer, 4,
                             cfg.threshold, make_mesh((1, 1, 1)), model_inputs=model.BATCH_INPUTS, resize="logits",
                             type_of=expression_type_of(cfg))
  for k in ev.REPORTED + ev.NO_TARGET:
    assert result[k] == pytest.approx(written[k], abs=1e-6), k

  # predict: one image and a phrase; the head's answer lands in scores.json (and "no target" on stdout).
  from PIL import Image
  image = str(tmp_path / "scene.png")
  Image.fromarray(examples[0]["image"]).save(image)
  out = str(tmp_path / "pred")
  assert predict.main(["--workdir", workdir, "--image", image, "--text", "the purple star", "--out", out]) == 0
  scores = json.load(open(os.path.join(out, "scene_scores.json")))
  assert isinstance(scores["no_target"], bool) and scores["text"] == "the purple star"
  mask = np.asarray(Image.open(os.path.join(out, "scene_mask.png")))
  assert mask.shape == examples[0]["image"].shape[:2] and (not scores["no_target"] or not mask.any())

  # Many images (--image-dir): each image's scores.json carries the head's answer, summary.json lists the
  # images it called empty, and those masks are empty.
  scenes = tmp_path / "scenes"
  scenes.mkdir()
  for i, e in enumerate(examples[:3]):
    Image.fromarray(e["image"]).save(scenes / f"s{i}.png")
  out = tmp_path / "pred_many"
  assert predict.main(["--workdir", workdir, "--image-dir", str(scenes), "--text", "the purple star", "--out", str(out)]) == 0
  summary = json.load(open(out / "summary.json"))
  assert len(summary["written"]) == 3 and not summary["failed"]
  for i in range(3):
    said = json.load(open(out / f"s{i}_scores.json"))["no_target"]
    assert isinstance(said, bool) and said == (str(scenes / f"s{i}.png") in summary["no_target"])
    assert not said or not np.asarray(Image.open(out / f"s{i}_mask.png")).any()

  # The demo loads the run as a bridge and gives the CLI's answer for the same image and phrase.
  from jaxris import demo
  segmenter = demo.load_segmenter(workdir=workdir)
  answer = segmenter.answer(examples[0]["image"], demo.Prompts(), "the purple star")
  assert segmenter.kind == "bridge" and answer.no_target is scores["no_target"]
  np.testing.assert_array_equal(answer.mask, mask > 0)


def test_evaluate_refuses_an_oracle_unless_allowed(tmp_path):
  cfg = _tiny("refshapes,sparse_query=gt_category")
  assert "ORACLE" in cfg.name and "category" in bridge_vitb.get_config("sparse_query=gt_category").name.lower()
  workdir = tmp_path / "oracle"
  _export(cfg, str(workdir / "model"))
  from jaxris.inference.bridge_predictor import BridgePredictor, OracleModelError
  with pytest.raises(OracleModelError, match="ORACLE"):
    BridgePredictor(str(workdir / "model"))
  recipe = "configs/bridge_vitb.py:refshapes,sparse_query=gt_category"
  base = [sys.executable, "-m", "jaxris.evaluate", "--config", recipe,
          "--workdir", str(workdir), "--split", "val", "--config.mesh=1,1,1", "--config.batch_size=4",
          "--config.data.image_size=64", "--config.data.refshapes.image_size=64", "--config.data.refshapes.num_val=2"]
  env, root = dict(os.environ, JAX_PLATFORMS="cpu"), os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  refused = subprocess.run(base, capture_output=True, text=True, env=env, cwd=root)
  assert refused.returncode == 2 and "ORACLE" in refused.stderr and "--allow_oracle" in refused.stderr
  assert not (workdir / "eval_val.json").exists()
  # --allow_oracle evaluates; the results say "oracle": true.
  from jaxris.inference import evaluation as ev
  result = {k: 1.0 for k in ev.REPORTED}
  assert json.load(open(ev.write_result(str(workdir), "val", result, oracle=True)))["oracle"] is True
  assert "oracle" not in json.load(open(ev.write_result(str(workdir), "val", result)))


@pytest.mark.parametrize("key, command", [("sam", "jaxris.convert.sam"), ("clip", "jaxris.convert.clip"),
                                          ("bert", "jaxris.convert.bert"), ("constants", "jaxris.weights.bridge")])
def test_build_names_each_missing_piece_and_its_command(tmp_path, key, command):
  from jaxris import build
  cfg = bridge_vitb.get_config()
  for k in ("sam", "clip", "bert", "constants", "sam_decoder"):
    cfg.init[k] = ""
  cfg.init[key] = str(tmp_path / "missing")
  with pytest.raises(FileNotFoundError, match=command.replace(".", r"\.")) as e:
    build.check_init_paths(cfg.model, cfg.init)
  assert str(tmp_path / "missing") in str(e.value)


def test_recipes():
  full = bridge_vitb.get_config()
  assert full.model.sparse_query == "bert_cls" and not full.model.no_target_head and full.data.preprocess == "bridge"
  assert (full.optimizer.lr, full.optimizer.weight_decay, full.optimizer.grad_clip, full.steps, full.batch_size) == (
      5e-5, 0.05, 0.01, 100_000, 64)
  assert tuple(full.optimizer.milestone_steps) == (60_000, 90_000)
  assert (full.loss_weights.bce, full.loss_weights.dice) == (2.0, 0.5) and full.loss_weights.same_category_mask
  assert {"clip", "sam_encoder", "bert.embeddings", "bert.encoder.layer.10", "bert.encoder.layer.11",
          "clip_mlpl"} <= set(full.freeze)
  assert bridge_vitb.get_config("dataset=grefcoco").model.no_target_head
  assert bridge_vitb.get_config("bce=0.5,dice=2.0").loss_weights.bce == 0.5
  rs = bridge_vitb.get_config("refshapes,no_target=1")
  assert rs.data.train_split == "train_nt" and rs.model.no_target_head and rs.init.bert == "minilm"
  assert rs.init.sam_decoder == "mobile_sam"
  from jaxris.train import lr_schedule
  s = lr_schedule(full.optimizer, 100, 100_000)
  assert [float(s(t)) for t in (0, 59_999, 60_000, 90_000)] == pytest.approx([5e-5, 5e-5, 5e-6, 5e-7])


def test_no_target_splits_leave_the_base_splits_alone():
  cfg = refshapes.RefShapesConfig(num_val=12)
  for i in range(12):
    base, nt = refshapes.example(cfg, "val", i), refshapes.example(cfg, "val_nt", i)
    np.testing.assert_array_equal(base["image"], nt["image"])
    if nt["no_target"]:
      colour, kind = nt["sentences"][0].split()[1:]
      assert not nt["mask"].any() and nt["category_ids"] == []
      assert all((s.colour, s.kind) != (colour, kind) for s in refshapes.scene(cfg, "val", i).shapes)
    else:
      assert nt["sentences"] == base["sentences"] and np.array_equal(nt["mask"], base["mask"])
  assert "val_nt" in refshapes.NO_TARGET_SPLITS and "val_nt" not in refshapes.SPLITS
