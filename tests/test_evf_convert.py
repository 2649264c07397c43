"""EVF-SAM checkpoint directories -> jaxris: round trip, strictness, refused variants, the CLI.

Checkpoints are written as the Hugging Face release lays them out (config.json, official module
names in pytorch_model.bin or model.safetensors, tokenizer files), with a small random model.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import evf_reference as ref_lib
from jaxris.inference.evf_predictor import EvfPredictor
from jaxris.weights import evf_sam
from jaxris.weights.mapping import ConversionError
from parity import assert_close

CONVERT = [sys.executable, str(Path(__file__).resolve().parents[1] / "convert" / "evf_sam.py")]


@pytest.fixture(scope="module")
def release(tmp_path_factory):
  """(reference model, its state_dict, a directory holding the release's tokenizer files + config.json)."""
  torch.set_num_threads(1)
  ref = ref_lib.reference_model(seed=4, sam_width=64, img_size=256, beit_layers=1)
  root = tmp_path_factory.mktemp("release")
  ref_lib.write_tokenizer(root)
  ref_lib.write_config(root)
  return ref, ref.state_dict(), root


def checkpoint_dir(tmp_path, release, state_dict=None, fmt="bin", **config):
  _, sd, root = release
  src = tmp_path / f"src_{fmt}"
  shutil.copytree(root, src)
  if config:
    ref_lib.write_config(src, **config)
  sd = sd if state_dict is None else state_dict
  if fmt == "bin":
    torch.save(sd, src / "pytorch_model.bin")
  else:
    save_file({k: v.contiguous() for k, v in sd.items()}, str(src / "model.safetensors"))
  return src


def test_safetensors_round_trip_matches_the_reference(release, tmp_path):
  ref, sd, _ = release
  assert "mm_extractor.beit3.vision_embed.mask_token" in sd and "text_hidden_fcs.0.2.weight" in sd
  src, out = checkpoint_dir(tmp_path, release, fmt="safetensors"), tmp_path / "out"
  cfg, _ = evf_sam.convert_dir(str(src), str(out))
  assert (cfg.sam.encoder.img_size, cfg.beit3.encoder_layers, cfg.fusion, cfg.pooling) == (256, 1, "early", "vision_cls")
  for name in ("sentencepiece.bpe.model", "tokenizer_config.json", "special_tokens_map.json", "config.json"):
    assert (out / name).is_file()
  predictor = EvfPredictor(str(out))  # weights and tokenizer from DIR alone
  image = np.random.default_rng(0).integers(0, 256, (60, 90, 3), dtype=np.uint8)
  sam_image, resize = ref_lib.sam_preprocess(image, img_size=256)
  ids = ref_lib.collate_prompts(_official_tokenizer(out), ["zebra top left"])[0]
  with torch.no_grad():
    expected = ref.inference(sam_image[None], ref_lib.beit3_preprocess(image)[None], ids, [resize], [image.shape[:2]])
  assert_close(predictor.predict(image, "zebra top left"), expected[0], what="converted model logits")


def _official_tokenizer(directory):
  from transformers import AutoTokenizer
  return AutoTokenizer.from_pretrained(str(directory), padding_side="right", use_fast=False)


def test_fp16_bin_and_shards_become_float32(release, tmp_path):
  _, sd, _ = release
  half = {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}
  src = checkpoint_dir(tmp_path, release, state_dict=half, fmt="bin")
  hf_config, read = evf_sam.read_checkpoint(str(src))
  assert hf_config["architectures"] == ["EvfSamModel"] and all(v.dtype == np.float32 for v in read.values())
  _, params = evf_sam.convert_state_dict(read, hf_config=hf_config)
  _, expected = evf_sam.convert_state_dict({k: v.float().numpy() for k, v in half.items()})
  assert params.keys() == expected.keys() and all(np.array_equal(params[k], expected[k]) for k in params)
  # A sharded save (model.safetensors.index.json + shards) reads back the same tensors.
  shards, names = tmp_path / "shards", sorted(sd)
  shards.mkdir()
  halves = {"a.safetensors": names[:len(names) // 2], "b.safetensors": names[len(names) // 2:]}
  for file, keys in halves.items():
    save_file({k: sd[k].contiguous() for k in keys}, str(shards / file))
  (shards / "model.safetensors.index.json").write_text(
      json.dumps({"weight_map": {k: f for f, keys in halves.items() for k in keys}}))
  shutil.copy(src / "config.json", shards / "config.json")
  _, sharded = evf_sam.read_checkpoint(str(shards))
  assert sharded.keys() == sd.keys() and all(np.array_equal(sharded[k], sd[k].numpy()) for k in sd)


def test_missing_extra_and_mis_shaped_are_listed_at_once(release):
  _, sd, _ = release
  bad = {k: v.numpy() for k, v in sd.items() if k != "text_hidden_fcs.0.2.bias"}
  bad["visual_model.mask_decoder.iou_token.weight"] = np.zeros((2, 256), np.float32)
  bad["text_hidden_fcs.1.0.weight"] = np.zeros((3, 3), np.float32)
  with pytest.raises(ConversionError) as e:
    evf_sam.convert_state_dict(bad)
  message = str(e.value)
  for name in ("text_hidden_fcs.0.2.bias", "visual_model.mask_decoder.iou_token.weight", "text_hidden_fcs.1.0.weight"):
    assert name in message, message
  assert "missing" in message and "unexpected" in message and "wrong shape" in message


@pytest.mark.parametrize("architecture,name", [("EvfSam2Model", "EVF-SAM2"), ("EvfEffiSamModel", "EVF-Effi-SAM")])
def test_out_of_scope_variants_are_refused_by_config(release, tmp_path, architecture, name):
  _, _, root = release
  src = tmp_path / "variant"
  shutil.copytree(root, src)
  ref_lib.write_config(src, architecture=architecture, sam_scale="large")  # no weights read before refusing
  with pytest.raises(ConversionError, match=f"{name}.*out of scope"):
    evf_sam.read_checkpoint(str(src))


def test_sam2_keys_and_config_mismatch_are_refused(release):
  _, sd, _ = release
  sam2 = {k: v.numpy() for k, v in sd.items()}
  sam2["visual_model.sam_mask_decoder.iou_token.weight"] = np.zeros((1, 256), np.float32)
  with pytest.raises(ConversionError, match="EVF-SAM2.*out of scope"):
    evf_sam.convert_state_dict(sam2)
  with pytest.raises(ConversionError, match="hidden_size=1024 but the weights say 768"):
    evf_sam.convert_state_dict({k: v.numpy() for k, v in sd.items()}, hf_config={"hidden_size": 1024})


def test_added_tokens_are_kept(release, tmp_path):
  # evf-sam-multitask's added_tokens.json gives "[semantic]" the id after the sentencepiece pieces.
  _, sd, root = release
  model_dir = tmp_path / "multitask"
  shutil.copytree(root, model_dir)
  plain = evf_sam.load_tokenizer(str(model_dir), evf_sam.infer_config({k: v.numpy() for k, v in sd.items()}))
  semantic = plain.vocab_size
  (model_dir / "added_tokens.json").write_text(json.dumps({"[semantic]": semantic}))
  tok = evf_sam.load_tokenizer(str(model_dir), evf_sam.infer_config({k: v.numpy() for k, v in sd.items()}))
  ids = tok(["[semantic] sky"])["input_ids"][0].tolist()
  assert ids[:2] == [0, semantic] and ids[-1] == 2
  (model_dir / "added_tokens.json").write_text(json.dumps({"[semantic]": semantic + 5}))
  with pytest.raises(ValueError, match="recorded ids"):
    evf_sam.load_tokenizer(str(model_dir), evf_sam.infer_config({k: v.numpy() for k, v in sd.items()}))


def test_cli_help_and_errors(release, tmp_path):
  run = subprocess.run(CONVERT + ["--help"], capture_output=True, text=True)
  assert run.returncode == 0 and "EvfSam2Model" in run.stdout and "--src" in run.stdout
  run = subprocess.run(CONVERT + ["--src", str(tmp_path / "nope"), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True)
  assert run.returncode == 2 and "YxZhang/evf-sam" in run.stderr and "Traceback" not in run.stderr
  _, _, root = release
  src = tmp_path / "sam2"
  shutil.copytree(root, src)
  ref_lib.write_config(src, architecture="EvfSam2Model")
  run = subprocess.run(CONVERT + ["--src", str(src), "--out", str(tmp_path / "o")], capture_output=True, text=True)
  assert run.returncode == 2 and "out of scope" in run.stderr and "Traceback" not in run.stderr


def test_full_size_release_layout():
  # The released EvfSamModel (SAM-H + BEiT-3 large): 1569 tensors, 1.315 B values, built on torch's
  # meta device and passed as zero-stride arrays, so no memory is spent. Converts to EvfConfig().
  from jaxris.models.ris.evf import EvfConfig

  with torch.device("meta"):
    ref = ref_lib.EvfSamReference(ref_lib.build_sam(1280, 32, 16, (7, 15, 23, 31)),
                                  ref_lib.beit3_args(1024, 24, 16, 4096, 64010))
  sd = {k: np.broadcast_to(np.float32(0), tuple(v.shape)) for k, v in ref.state_dict().items()}
  assert len(sd) == 1569 and sum(v.size for v in sd.values()) == 1_315_105_328
  cfg, params = evf_sam.convert_state_dict(sd, hf_config={"architectures": ["EvfSamModel"], "hidden_size": 1024,
                                                          "out_dim": 256, "sam_scale": "huge"})
  assert cfg == EvfConfig() and len(params) == 1568  # all but vision_embed.mask_token
