"""CLIPModel parity with transformers' CLIPModel / CLIPVisionModel / CLIPTextModel: random weights
(every tensor, layer norms and embeddings included), the bridge's ViT-L/14-336 width at 2 blocks,
text towers with padding and both pooling rules, and one full-size ViT-L/14-336 vision tower."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from parity import assert_close

from jaxris.models.clip import (PRESETS, CLIPConfig, CLIPTextConfig, CLIPVisionConfig, abstract_model,
                               abstract_vision_model)
from jaxris.weights import clip as clip_weights
from jaxris.weights import store
from jaxris.weights.random_torch import randomize_

# The bridge's CLIP (OpenAI ViT-L/14@336px) at 2 blocks per tower.
VIT_L_336_VISION = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=2, num_attention_heads=16,
                        image_size=336, patch_size=14)
VIT_L_336_TEXT = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=2, num_attention_heads=12,
                      vocab_size=49408, max_position_embeddings=77)
SMALL_VISION = dict(hidden_size=96, intermediate_size=200, num_hidden_layers=2, num_attention_heads=4,
                    image_size=56, patch_size=8)
SMALL_TEXT = dict(hidden_size=64, intermediate_size=136, num_hidden_layers=2, num_attention_heads=4,
                  vocab_size=300, max_position_embeddings=20, bos_token_id=298, eos_token_id=299, pad_token_id=0)

_forward = nnx.jit(lambda model, *args, **kwargs: model(*args, **kwargs))
_image_features = nnx.jit(lambda model, *args: model.get_image_features(*args))
_text_features = nnx.jit(lambda model, *args: model.get_text_features(*args))
_interpolated = nnx.jit(lambda model, pixels: model(pixels, interpolate_pos_encoding=True))


def _hf_config(text: dict, vision: dict, projection_dim: int) -> transformers.CLIPConfig:
  return transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)


def _pair(text: dict, vision: dict, projection_dim: int = 48, seed: int = 0, std: float = 0.05, dtype=None):
  """A random transformers CLIPModel (every tensor drawn, logit_scale too) and our converted copy."""
  torch.manual_seed(seed)
  torch_model = randomize_(transformers.CLIPModel(_hf_config(text, vision, projection_dim)), seed, std)
  config = CLIPConfig.from_hf_config(torch_model.config.to_dict())
  params = clip_weights.convert_state_dict(torch_model.state_dict(), config)
  model = abstract_model(config, dtype=dtype)  # no random init: every parameter is assigned
  store.assign_params(model, dict(params))
  return torch_model, model


def _pixels(batch: int, size: int, seed: int = 0):
  """(NCHW for torch, NHWC for us)."""
  x = np.random.default_rng(seed).normal(size=(batch, 3, size, size)).astype(np.float32)
  return x, x.transpose(0, 2, 3, 1)


def _ids(batch: int, length: int, vocab: int, eot: int, seed: int = 0, pad: int = 0):
  """Random ids with a start token, an end-of-text token at a different place per row, then padding."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(1, min(vocab, eot) - 1, (batch, length))
  mask = np.ones((batch, length), np.int64)
  for i in range(batch):
    end = max(2, length - 3 * i)  # row 0 fills every slot
    ids[i, 0] = eot - 1
    ids[i, end - 1] = eot
    ids[i, end:] = pad
    mask[i, end:] = 0
  return ids, mask


def _compare_tower(ours, theirs, what):
  assert len(ours.hidden_states) == len(theirs.hidden_states), what
  for i, (a, b) in enumerate(zip(ours.hidden_states, theirs.hidden_states)):
    assert_close(a, b, what=f"{what} hidden_states[{i}]")
  assert_close(ours.last_hidden_state, theirs.last_hidden_state, what=f"{what} last_hidden_state")
  assert_close(ours.pooler_output, theirs.pooler_output, what=f"{what} pooler_output")


def test_vit_l_336_width_matches_transformers():
  """Both towers at the bridge's widths (vision 1024 x 16 heads, 336 px, patch 14: 577 tokens),
  2 blocks each; every hidden state, pooled and projected outputs and the CLIP logits."""
  torch_model, model = _pair(VIT_L_336_TEXT, VIT_L_336_VISION, projection_dim=768, seed=1)
  torch_pixels, pixels = _pixels(2, 336)
  ids, mask = _ids(3, 77, 49408, 49407)
  with torch.no_grad():
    ref = torch_model(input_ids=torch.tensor(ids), pixel_values=torch.tensor(torch_pixels),
                      attention_mask=torch.tensor(mask))
    # (transformers 5's CLIPModel puts the projected embeddings in its towers' pooler_output: run them alone)
    ref_vision = torch_model.vision_model(pixel_values=torch.tensor(torch_pixels), output_hidden_states=True)
    ref_text_tower = torch_model.text_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                                            output_hidden_states=True)
  out = _forward(model, jnp.asarray(ids), jnp.asarray(pixels), jnp.asarray(mask))
  assert out.vision_model_output.last_hidden_state.shape == (2, 577, 1024)
  _compare_tower(out.vision_model_output, ref_vision, "vision")
  _compare_tower(out.text_model_output, ref_text_tower, "text")
  for name in ("image_embeds", "text_embeds", "logits_per_image", "logits_per_text"):
    assert_close(getattr(out, name), getattr(ref, name), what=name)
  # The bridge's features: the last block's output before post_layernorm, class token dropped.
  assert_close(out.vision_model_output.hidden_states[-1][:, 1:], ref_vision.last_hidden_state[:, 1:],
               what="bridge features")


# name -> (text config kwargs, what the call is given)
TEXT_CASES = {
    # eos_token_id 299: pooled at the first end-of-text id, padding mask given
    "eos-id-mask": (SMALL_TEXT, dict(mask=True)),
    # the legacy hub configs: eos_token_id 2 -> argmax of the ids; no mask (OpenAI: causal only)
    "legacy-argmax-no-mask": (dict(SMALL_TEXT, eos_token_id=2), dict(mask=False)),
    # exact gelu, odd head dim (72 / 4 = 18), padding with the end-of-text id (transformers' tokenizer)
    "gelu-pad-with-eot": (dict(SMALL_TEXT, hidden_size=72, hidden_act="gelu", num_hidden_layers=1),
                          dict(mask=True, pad_with_eot=True)),
}


@pytest.mark.parametrize("name", list(TEXT_CASES))
def test_text_tower_matches_transformers(name):
  text, given = TEXT_CASES[name]
  torch_model, model = _pair(text, SMALL_VISION, seed=len(name))
  eot = 299
  ids, mask = _ids(4, 20, text["vocab_size"], eot, seed=2, pad=eot if given.get("pad_with_eot") else 0)
  args = [jnp.asarray(ids)] + ([jnp.asarray(mask)] if given["mask"] else [])
  with torch.no_grad():
    ref = torch_model.text_model(input_ids=torch.tensor(ids),
                                 attention_mask=torch.tensor(mask) if given["mask"] else None,
                                 output_hidden_states=True)
    ref_projected = torch_model.get_text_features(
        input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask) if given["mask"] else None).pooler_output
  out = _forward(model.text_model, *args)
  _compare_tower(out, ref, name)
  assert_close(_text_features(model, *args), ref_projected, what=f"{name} projected")
  # The pooled row is the end-of-text position of each row.
  ends = (ids == eot).argmax(1)
  np.testing.assert_array_equal(np.asarray(out.pooler_output), np.asarray(out.last_hidden_state)[np.arange(4), ends])


def test_tanh_gelu_interpolated_positions_and_image_features_match_transformers():
  """A vision tower with gelu_new, run at 72 px with the 56 px position table resized (bicubic)."""
  torch_model, model = _pair(SMALL_TEXT, dict(SMALL_VISION, hidden_act="gelu_new"), seed=3)
  torch_pixels, pixels = _pixels(2, 72, seed=4)
  with torch.no_grad():
    ref = torch_model.vision_model(pixel_values=torch.tensor(torch_pixels), interpolate_pos_encoding=True,
                                   output_hidden_states=True)
    native = torch_model.vision_model(pixel_values=torch.tensor(torch_pixels[:, :, :56, :56]),
                                      output_hidden_states=True)
    projected = torch_model.get_image_features(pixel_values=torch.tensor(torch_pixels[:, :, :56, :56])).pooler_output
  _compare_tower(_interpolated(model.vision_model, jnp.asarray(pixels)), ref, "interpolated 72px")
  _compare_tower(_forward(model.vision_model, jnp.asarray(pixels[:, :56, :56])), native, "native 56px")
  assert_close(_image_features(model, jnp.asarray(pixels[:, :56, :56])), projected, what="get_image_features")


def test_bfloat16_compute_keeps_float32_params_and_stays_close():
  torch_model, model = _pair(SMALL_TEXT, SMALL_VISION, seed=5, dtype=jnp.bfloat16)
  assert all(v.dtype == jnp.float32 for v in store.flat_params(model).values())
  torch_pixels, pixels = _pixels(2, 56)
  with torch.no_grad():
    ref = torch_model.vision_model(pixel_values=torch.tensor(torch_pixels))
  out = _forward(model.vision_model, jnp.asarray(pixels))
  assert out.last_hidden_state.dtype == jnp.bfloat16
  assert_close(out.last_hidden_state, ref.last_hidden_state, tol=5e-2, what="bf16 last_hidden_state")


def test_config_from_hf_config_and_presets(tmp_path):
  hf = _hf_config(SMALL_TEXT, SMALL_VISION, 48)
  hf.save_pretrained(tmp_path)
  from_dir = CLIPConfig.from_hf_config(tmp_path)
  assert from_dir == CLIPConfig.from_hf_config(tmp_path / "config.json") == CLIPConfig.from_hf_config(hf.to_dict())
  assert from_dir.vision == CLIPVisionConfig.from_hf_config(tmp_path)
  assert from_dir.text == CLIPTextConfig.from_hf_config(hf.to_dict())
  assert (from_dir.vision.grid, from_dir.vision.num_positions, from_dir.projection_dim) == (7, 50, 48)
  assert CLIPConfig.from_dict(from_dir.to_dict()) == from_dir
  assert CLIPConfig.from_hf_config({}) == CLIPConfig()  # transformers' defaults (ViT-B/32)
  assert CLIPConfig.from_hf_config(transformers.CLIPConfig().to_dict()) == CLIPConfig()
  # The presets are the sizes of transformers' configs of the OpenAI checkpoints.
  large = PRESETS["vit_l_14_336"]
  assert (large.vision.grid, large.vision.num_positions, large.vision.hidden_size // large.vision.num_attention_heads,
          large.text.hidden_size, large.projection_dim) == (24, 577, 64, 768, 768)
  assert PRESETS["vit_b_16"].vision.num_positions == 197 and PRESETS["vit_b_16"].text.eos_token_id == 2
  with pytest.raises(ValueError, match="hidden_act"):
    CLIPVisionConfig.from_hf_config({"hidden_act": "swiglu"})
  with pytest.raises(ValueError, match="multiple"):
    CLIPTextConfig.from_hf_config({"hidden_size": 100, "num_attention_heads": 3})
  with pytest.raises(ValueError, match="attention_dropout"):
    CLIPConfig.from_hf_config({"vision_config": {"attention_dropout": 0.1}})
  with pytest.raises(ValueError, match="not square"):
    CLIPVisionConfig.from_hf_config({"image_size": [224, 192]})
  with pytest.raises(ValueError, match="model_type"):
    CLIPConfig.from_hf_config({"model_type": "clip_vision_model"})
  with pytest.raises(FileNotFoundError, match="config.json"):
    CLIPConfig.from_hf_config(tmp_path / "nowhere")


def test_bad_inputs_are_refused():
  config = CLIPConfig(vision=CLIPVisionConfig(**SMALL_VISION), text=CLIPTextConfig(**SMALL_TEXT), projection_dim=8)
  model = abstract_model(config)  # the checks run before any compute
  with pytest.raises(ValueError, match="image size 64x64"):
    model.vision_model(jnp.zeros((1, 64, 64, 3)))
  with pytest.raises(ValueError, match="NHWC"):
    model.vision_model(jnp.zeros((1, 3, 56, 56)))
  with pytest.raises(ValueError, match="multiple of the patch size"):
    model.vision_model(jnp.zeros((1, 60, 60, 3)), interpolate_pos_encoding=True)
  with pytest.raises(ValueError, match="max_position_embeddings"):
    model.text_model(jnp.zeros((1, 21), jnp.int32))
  with pytest.raises(ValueError, match="attention_mask shape"):
    model.text_model(jnp.zeros((2, 5), jnp.int32), jnp.ones((2, 4), jnp.int32))
  with pytest.raises(ValueError, match=r"\[batch, length\]"):
    model.text_model(jnp.zeros((5,), jnp.int32))


@pytest.mark.slow
def test_full_size_vit_l_14_336_vision_tower_matches_transformers():
  """The bridge's frozen CLIP at full size (24 blocks, 1024 wide, 336 px), batch 1, random weights:
  every hidden state and the pooled class token, converted as a standalone CLIPVisionModel."""
  vision = dataclasses.asdict(PRESETS["vit_l_14_336"].vision)
  torch_model = randomize_(transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**vision)), seed=7, std=0.02)
  config = CLIPVisionConfig(**vision)
  model = abstract_vision_model(config)
  store.assign_params(model, dict(clip_weights.convert_vision_state_dict(torch_model.state_dict(), config)))
  torch_pixels, pixels = _pixels(1, 336, seed=8)
  with torch.no_grad():
    ref = torch_model(pixel_values=torch.tensor(torch_pixels), output_hidden_states=True)
  del torch_model
  out = _forward(model, jnp.asarray(pixels))
  assert len(out.hidden_states) == 25 and out.last_hidden_state.shape == (1, 577, 1024)
  errors = [assert_close(a, b, what=f"hidden_states[{i}]") for i, (a, b) in enumerate(zip(out.hidden_states,
                                                                                          ref.hidden_states))]
  errors.append(assert_close(out.pooler_output, ref.pooler_output, what="pooler_output"))
  print(f"full-size ViT-L/14-336: max error / scale {max(errors):.2e}")
