"""BEiT-3 converter: torchscale/unilm state_dicts -> jaxris params, strict, and the CLI."""

import argparse
import importlib.util
import os

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from parity import assert_close

from jaxris.models.beit3 import BEiT3, BEiT3Config, abstract_model
from jaxris.weights import beit3 as beit3_weights
from jaxris.weights import store
from jaxris.weights.mapping import ConversionError
from test_beit3 import SMALL as TINY
from test_beit3 import _forward, inputs, one_torch_thread, random_torch_model  # noqa: F401 (autouse fixture)

CLI = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "convert", "beit3.py")


def cli_main(argv):
  spec = importlib.util.spec_from_file_location("convert_beit3", CLI)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.main(argv)


@pytest.fixture(scope="module")
def tiny():
  tm = random_torch_model(TINY, seed=3)
  return tm, {k: v.numpy() for k, v in tm.state_dict().items()}


def unilm_checkpoint(sd):
  """What unilm fine-tuned checkpoints look like: beit3.* keys plus task heads next to them."""
  out = {f"beit3.{k}": torch.from_numpy(v) for k, v in sd.items()}
  out.update({"head.weight": torch.zeros(10, 128), "head.bias": torch.zeros(10),
              "fc_norm.weight": torch.ones(128), "fc_norm.bias": torch.zeros(128),
              "logit_scale": torch.tensor(2.0)})
  return out


def test_every_model_parameter_has_a_torchscale_tensor(tiny):
  _, sd = tiny
  shapes = store.param_shapes(abstract_model(TINY))
  assert len(shapes) == len(sd)  # one-to-one: the table neither merges nor splits tensors
  cfg, params = beit3_weights.convert_state_dict(sd, prefix="", ignore=())
  assert cfg == TINY
  assert params["encoder.layers.1.self_attn.q_proj.B.kernel"].shape == (128, 128)
  np.testing.assert_array_equal(params["encoder.layers.1.ffn.A.fc1.kernel"], sd["encoder.layers.1.ffn.A.fc1.weight"].T)
  np.testing.assert_array_equal(params["vision_embed.proj.kernel"],
                                sd["vision_embed.proj.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(params["encoder.embed_positions.A.embedding"],
                                sd["encoder.embed_positions.A.weight"])


def test_abstract_model_is_the_model(tiny):
  """The layer-copying abstract_model has the same module tree and shapes as the real one."""
  cfg = BEiT3Config(**{**TINY.to_dict(), "encoder_layers": 3, "drop_path_rate": 0.2})
  fast, slow = abstract_model(cfg), nnx.eval_shape(lambda: BEiT3(cfg, rngs=nnx.Rngs(0)))
  (g1, s1), (g2, s2) = nnx.split(fast), nnx.split(slow)
  assert g1 == g2
  assert store.param_shapes(fast) == store.param_shapes(slow)
  assert [l.drop_path.rate for l in fast.encoder.layers] == [l.drop_path.rate for l in slow.encoder.layers]


def test_cli_round_trip_of_a_unilm_checkpoint(tiny, tmp_path):
  tm, sd = tiny
  src, out = str(tmp_path / "beit3_tiny.pth"), str(tmp_path / "converted")
  # unilm's save_model stores the args Namespace next to the weights.
  torch.save({"model": unilm_checkpoint(sd), "args": argparse.Namespace(lr=1e-3)}, src)
  assert cli_main(["--src", src, "--out", out]) == 0
  model = beit3_weights.load(out)
  assert model.config == TINY
  _, params = beit3_weights.convert_state_dict(sd, prefix="", ignore=())
  loaded = store.flat_params(model)
  assert loaded.keys() == params.keys()
  for k in params:
    np.testing.assert_array_equal(np.asarray(loaded[k]), params[k], err_msg=k)
  images, ids, mask = inputs(TINY)
  with torch.no_grad():
    ref = tm(textual_tokens=torch.from_numpy(ids), visual_tokens=torch.from_numpy(images),
             text_padding_position=torch.from_numpy(mask == 0))["encoder_out"]
  out = _forward(model, jnp.asarray(ids, jnp.int32), jnp.asarray(images.transpose(0, 2, 3, 1)),
                 jnp.asarray(mask), None).encoder_out
  assert_close(out, ref, what="converted checkpoint encoder_out")


def test_prefix_for_checkpoints_that_embed_beit3(tiny):
  """EVF-SAM keeps the encoder at mm_extractor.beit3.*, next to SAM and its projector."""
  _, sd = tiny
  evf = {f"mm_extractor.beit3.{k}": v for k, v in sd.items()}
  evf["visual_model.image_encoder.pos_embed"] = np.zeros((1, 4, 4, 8), np.float32)
  evf["text_hidden_fcs.0.0.weight"] = np.zeros((128, 128), np.float32)
  with pytest.raises(ConversionError, match="visual_model.image_encoder.pos_embed"):
    beit3_weights.convert_state_dict(evf, prefix="mm_extractor.beit3.")
  cfg, params = beit3_weights.convert_state_dict(evf, prefix="mm_extractor.beit3.",
                                                 ignore=(r"visual_model\..*", r"text_hidden_fcs\..*"))
  assert cfg == TINY and len(params) == len(sd)
  # The rules alone, for a converter that places BEiT-3 inside a bigger model.
  names = {r.target for r in beit3_weights.rules("mm_extractor.beit3.", "mm_extractor.beit3.")}
  assert all(n.startswith("mm_extractor.beit3.") for n in names)


@pytest.mark.parametrize("fault", ["missing", "extra", "misshaped"])
def test_each_fault_alone_fails(tiny, fault):
  _, sd = tiny
  sd = dict(sd)
  key = "encoder.layers.0.ffn.B.ffn_layernorm.weight"
  if fault == "missing":
    del sd[key]
  elif fault == "extra":
    sd["encoder.layers.0.ffn.B.extra"] = np.zeros(3, np.float32)
  else:
    sd[key] = np.zeros(7, np.float32)
  with pytest.raises(ConversionError, match="ffn.B"):
    beit3_weights.convert_state_dict(sd, prefix="", ignore=())


def test_missing_extra_and_misshaped_are_all_named(tiny, tmp_path, capsys):
  _, sd = tiny
  ckpt = unilm_checkpoint(sd)
  del ckpt["beit3.encoder.layers.1.ffn.B.fc2.bias"]
  ckpt["beit3.encoder.layers.0.self_attn.rel_pos_bias"] = torch.zeros(4)
  ckpt["beit3.encoder.layers.0.self_attn.q_proj.A.weight"] = torch.zeros(128, 64)
  names = ["encoder.layers.1.ffn.B.fc2.bias", "beit3.encoder.layers.0.self_attn.rel_pos_bias",
           "beit3.encoder.layers.0.self_attn.q_proj.A.weight"]
  with pytest.raises(ConversionError) as e:
    beit3_weights.convert_state_dict({k: v.numpy() for k, v in ckpt.items()})
  for name in names:
    assert name in str(e.value)
  assert "1 missing" in str(e.value) and "1 unexpected" in str(e.value) and "1 with the wrong shape" in str(e.value)

  src = str(tmp_path / "bad.pth")
  torch.save({"model": ckpt}, src)
  assert cli_main(["--src", src, "--out", str(tmp_path / "out")]) == 2
  err = capsys.readouterr().err
  assert all(name in err for name in names)
  assert not os.path.exists(tmp_path / "out")  # nothing written on failure


def test_unknown_heads_fail_until_ignored_explicitly(tiny, tmp_path, capsys):
  _, sd = tiny
  ckpt = unilm_checkpoint(sd)
  ckpt["mim_head.weight"] = torch.zeros(8, 128)
  src = str(tmp_path / "pretrain.pth")
  torch.save({"model": ckpt}, src)
  assert cli_main(["--src", src, "--out", str(tmp_path / "a")]) == 2
  assert "mim_head.weight" in capsys.readouterr().err
  assert cli_main(["--src", src, "--out", str(tmp_path / "b"), "--ignore", r"mim_head\..*"]) == 0
  assert beit3_weights.load(str(tmp_path / "b")).config == TINY


def test_unsafe_pickles_and_missing_files_are_refused(tmp_path, capsys):
  src = str(tmp_path / "evil.pth")
  torch.save({"model": {"x": torch.zeros(1)}, "payload": os.getcwd}, src)  # a function: not plain data
  assert cli_main(["--src", src, "--out", str(tmp_path / "o")]) == 2
  assert "weights_only=True" in capsys.readouterr().err
  assert cli_main(["--src", str(tmp_path / "nope.pth"), "--out", str(tmp_path / "o")]) == 2
  assert "not found" in capsys.readouterr().err
  with pytest.raises(FileNotFoundError, match="convert"):
    beit3_weights.load(str(tmp_path / "o"))
