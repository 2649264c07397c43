"""DIT-SAM's token and cross-attention variants (Table 2 / Table 4 rows): parity against the PyTorch
reference of the official encoders (tests/dit_reference.py), the converter on official-layout
checkpoints, the official initialisations, and one training step of each refshapes recipe.
"""

import importlib.util
import types
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from transformers import BertConfig as HFBertConfig

from dit_reference import DitNet
from jaxris.models.bert import BertConfig
from jaxris.weights import dit as dit_weights
from jaxris.weights import store
from jaxris.weights.mapping import ConversionError
from jaxris.weights.random_torch import randomize_
from parity import assert_close, to_numpy
from sam_fixtures import nhwc

NEW = ["token_ldit", "token_edit", "crossatt", "crossatt_ffn"]
BERT = dict(hidden_size=96, num_hidden_layers=2, num_attention_heads=4, intermediate_size=200, vocab_size=300)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _reference(scheme, seed=1, **kw):
  # SAM shapes for 256 px run at 128 px (resized position embedding and tables, as DIT at 512),
  # depth 3 with one global block, every tensor random (including the new ones).
  torch.manual_seed(0)
  return randomize_(DitNet(scheme, img_size=256, bert_config=HFBertConfig(**BERT), **kw), seed=seed)


def _inputs(batch=2, size=128):
  g = torch.Generator().manual_seed(0)
  images = torch.randn(batch, 3, size, size, generator=g)
  ids = torch.randint(1, 300, (batch, 20), generator=g)
  mask = torch.ones(batch, 20, dtype=torch.int64)
  mask[0, 7:] = 0
  return images, ids, mask


@nnx.jit
def _forward(model, images, ids, mask):
  return model(images, ids, mask)


@nnx.jit
def _encode(model, images, text):
  return model.visual_encoder(images, text)


def _max_diff(ours, expected, what):
  assert_close(ours, expected, what=what)
  print(f"{what}: max abs diff {np.max(np.abs(to_numpy(ours) - to_numpy(expected))):.3g} "
        f"(scale {np.max(np.abs(to_numpy(expected))):.3g})")


# The tensors each variant adds to the official state_dict (depth D = 3), per the official encoders.
_MHATT = [f"linear_{n}.{p}" for n in "vkq" for p in ("weight", "bias")] + ["linear_merge.weight", "linear_merge.bias"]
EXTRA_KEYS = {
    "token_ldit": {"tokens"},
    "token_edit": {"tokens", "probs.weight", "probs.bias"},
    "crossatt": ({f"probs.{i}.{p}" for i in range(3) for p in ("weight", "bias")}
                 | {f"cross.{i}.{k}" for i in range(2) for k in _MHATT}
                 | {f"ln.{i}.{p}" for i in range(2) for p in ("weight", "bias")}),
    "crossatt_ffn": ({f"cross.{i}.mhatt.{k}" for i in range(3) for k in _MHATT}
                     | {f"cross.{i}.{m}.{p}" for i in range(3) for p in ("weight", "bias")
                        for m in ("ffn.mlp.fc.linear", "ffn.mlp.linear", "norm1", "norm2")}
                     | {f"ln.{i}.{p}" for i in range(3) for p in ("weight", "bias")}),
}
_SAM_ENCODER = ("blocks.", "neck.", "patch_embed.", "pos_embed")


@pytest.mark.parametrize("scheme", NEW)
def test_official_checkpoint_converts_and_matches_reference(scheme, tmp_path):
  ref = _reference(scheme)
  sd = {k: v.numpy() for k, v in ref.state_dict().items()}
  extra = {k.removeprefix("visual_encoder.") for k in sd if k.startswith("visual_encoder.")}
  assert {k for k in extra if not k.startswith(_SAM_ENCODER)} == EXTRA_KEYS[scheme]
  # A released file: DDP prefix inside a training-checkpoint dict, unused tensors included.
  sd = dit_weights.unwrap({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in sd.items()}})
  cfg = dit_weights.infer_config(sd, scheme, bert=BertConfig(**BERT))
  params = dit_weights.convert_state_dict(sd, cfg)
  for name in EXTRA_KEYS[scheme]:  # Linear weights transposed; tokens, biases, DIT's LayerNorms as they are
    source, stem = sd[f"visual_encoder.{name}"], f"visual_encoder.{name}".removesuffix(".weight")
    target = params[f"{stem}.kernel"] if source.ndim == 2 else params[stem if name == "tokens" else f"visual_encoder.{name}"]
    np.testing.assert_array_equal(target, source.T if source.ndim == 2 else source, err_msg=name)
  dit_weights.save(str(tmp_path), cfg, params)
  model = dit_weights.load(str(tmp_path))
  assert model.cfg == cfg and store.flat_params(model).keys() == params.keys()

  # The encoder against the official forward (the rest of the model is shared with test_dit.py).
  images, _, _ = _inputs()
  text = torch.randn(2, 20, BERT["hidden_size"], generator=torch.Generator().manual_seed(2))
  with torch.no_grad():
    expected = ref.visual_encoder(images, text).permute(0, 2, 3, 1)
  _max_diff(_encode(model, jnp.asarray(nhwc(images)), jnp.asarray(text.numpy())), expected, f"{scheme} encoder")
  if scheme.startswith("token"):  # the learnt tokens are per text position: exactly 20 of them
    with pytest.raises(ValueError, match="20 text tokens"):
      model.visual_encoder(jnp.asarray(nhwc(images)), jnp.asarray(text.numpy()[:, :12]))

  # Strict: a missing tensor and the wrong scheme are both reported by name.
  key = next(k for k in sd if k.startswith(("visual_encoder.tokens", "visual_encoder.cross.0.")))
  with pytest.raises(ConversionError, match=re.escape(key.removesuffix(".weight"))):
    dit_weights.convert_state_dict({k: v for k, v in sd.items() if k != key}, cfg)
  with pytest.raises(ConversionError, match=r"visual_encoder\.(tokens|cross|ln|probs)"):
    dit_weights.convert_state_dict(sd, dit_weights.infer_config(sd, "ldit", bert=BertConfig(**BERT)))


def test_whole_model_with_text_narrower_than_vit():
  # Not an official path: BERT 96 -> ViT 128 through prob_text, then the official cross-attention
  # slots; the whole net (BERT layer 1, sparse prompts, decoder, x4 upsampling) against the reference.
  ref = _reference("crossatt", embed_dim=128)
  assert "visual_encoder.prob_text.weight" in ref.state_dict()
  model = dit_weights.from_torch(ref.state_dict(), "crossatt", bert=BertConfig(**BERT))
  images, ids, mask = _inputs()
  with torch.no_grad():
    expected = ref(images, ids, mask)
  ours = _forward(model, jnp.asarray(nhwc(images)), jnp.asarray(ids.numpy()), jnp.asarray(mask.numpy()))
  _max_diff(ours, expected, "crossatt (prob_text) logits")


def test_sharding_rules_split_the_new_parameters():
  import dataclasses

  from jaxris.models.ris.dit_encoder import TextInjectedEncoder
  from jaxris.models.sam.sam import sam_config
  from jaxris.sharding import make_mesh, model_plan

  mesh = make_mesh((1, 4, 2))
  enc = dataclasses.replace(sam_config("vit_b").encoder, depth=2, global_attn_indexes=(1,))

  def specs(scheme):  # the logical names the modules declare, through the default rules
    p = model_plan(nnx.eval_shape(lambda: TextInjectedEncoder(enc, scheme, 768, rngs=nnx.Rngs(0))), mesh)
    assert not p.unnamed and not p.fallbacks, p.report()
    return {k: tuple(v) for k, v in p.specs.items()}
  spec = specs("crossatt")
  assert spec["cross.0.linear_q.kernel"] == ("fsdp", "tensor")  # heads over 'tensor'
  assert spec["cross.0.linear_q.bias"] == ("tensor",)
  assert spec["cross.0.linear_merge.kernel"] == ("tensor", "fsdp")
  assert spec["probs.0.kernel"] == ("fsdp", "tensor")
  spec = specs("crossatt_ffn")
  assert spec["cross.0.mhatt.linear_merge.kernel"] == ("tensor", "fsdp")
  assert spec["cross.0.ffn.mlp.fc.linear.kernel"] == ("fsdp", "tensor")
  assert spec["cross.0.ffn.mlp.linear.kernel"] == ("tensor", "fsdp")
  assert specs("token_ldit")["tokens"] == (None, None, "fsdp")


def _check_official_init(scheme, params, width, depth):
  p = lambda name: np.asarray(params[f"visual_encoder.{name}"])
  if scheme == "token_ldit":
    assert p("tokens").shape == (depth, 20, width) and abs(p("tokens").std() - 1) < 0.05  # torch.randn
  elif scheme == "token_edit":
    tokens, bound = p("tokens"), np.sqrt(6 / (20 * width + (depth - 1) * width))  # torch's fans of a 3-D tensor
    assert tokens.shape == (depth - 1, 20, width) and 0.95 * bound < np.abs(tokens).max() <= bound
    for name in ("probs.kernel", "probs.bias"):  # torch's default Linear init
      assert 0.9 * width ** -0.5 < np.abs(p(name)).max() <= width ** -0.5, name
  elif scheme == "crossatt":
    assert np.all(p("probs.1.kernel") == 1) and np.all(p("probs.1.bias") == 0)
    assert p("cross.0.linear_q.kernel").shape == (width, 512) and np.all(p("cross.0.linear_merge.bias") == 0)
    assert f"visual_encoder.cross.{depth - 1}.linear_q.kernel" not in params
  else:
    assert p(f"cross.{depth - 1}.ffn.mlp.fc.linear.kernel").shape == (width, 2048)
    assert np.all(p("ln.0.weight") == 1) and np.all(p("cross.0.norm2.bias") == 0)
    assert np.all(p("cross.0.mhatt.linear_v.bias") == 0)


def _recipe(scheme, arg="refshapes"):
  spec = importlib.util.spec_from_file_location(scheme, os.path.join(ROOT, "configs", f"{scheme}_vitb.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


@pytest.mark.parametrize("scheme", NEW)
def test_refshapes_recipe_trains_a_step(scheme, monkeypatch):
  from jaxris import build
  from jaxris.models.bert import BertModel
  from jaxris.models.functional import split_params
  from jaxris.sharding import global_batch, make_mesh
  from jaxris.train import create_trainer
  from jaxris.weights import bert as bert_weights

  cfg = _recipe(scheme)
  assert cfg.model.scheme == scheme and _recipe(scheme, "").epochs == (40 if scheme.startswith("token") else 25)
  # The recipe's model (128 wide, text 384 wide through prob_text) at 2 blocks and 64 px, with a
  # one-layer MiniLM-sized text encoder in place of the bundled MiniLM, to stay fast. Remat (which
  # wraps the blocks, not the slot modules) once, for the scheme with the most slot parameters.
  cfg.model.sam_overrides = dict(cfg.model.sam_overrides, depth=2, global_attn_indexes=(1,), img_size=64)
  cfg.model.remat = scheme == "crossatt_ffn"
  text = BertModel(BertConfig(vocab_size=100, hidden_size=384, num_hidden_layers=1, num_attention_heads=6,
                              intermediate_size=64, max_position_embeddings=32), rngs=nnx.Rngs(1))
  monkeypatch.setattr(bert_weights, "load", lambda path: (text, types.SimpleNamespace(max_length=20)))
  model, _, _ = build.build(cfg.model, cfg.init, seed=0)
  graphdef, params, rest = split_params(model)
  _check_official_init(scheme, params, width=128, depth=2)
  mesh = make_mesh((1, 1, 1), jax.devices()[:1])
  trainer = create_trainer(cfg, graphdef, params, rest, mesh, steps_per_epoch=10, total_steps=100)
  rng = np.random.default_rng(0)
  batch = {"image": rng.standard_normal((2, 64, 64, 3)).astype(np.float32),
           "mask": (rng.random((2, 64, 64)) > 0.7).astype(np.float32),
           "input_ids": rng.integers(1, 100, (2, 20)).astype(np.int32),
           "attention_mask": (np.arange(20)[None] < np.array([[5], [20]])).astype(np.int32)}
  state, metrics = trainer.step(trainer.state, global_batch(batch, mesh))
  assert np.isfinite(float(metrics["loss"]))
  new = [k for k in state["params"]
         if k.startswith("visual_encoder.") and k.split(".")[1] in ("tokens", "probs", "cross", "ln", "prob_text")]
  assert new and all(np.all(np.isfinite(np.asarray(state["params"][k]))) for k in new)
  moved = [k for k in new if np.any(np.asarray(state["params"][k]) != np.asarray(params[k]))]
  assert moved, f"no {scheme} slot parameter moved"
