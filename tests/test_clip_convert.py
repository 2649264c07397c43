"""The CLIP converter: Hugging Face directories (safetensors and pytorch_model.bin) and OpenAI's
layout (a TorchScript archive like clip.load's .pt, and a plain state_dict), through the CLI;
the converted model equals the torch model, tokenizer included; strictness errors."""

import importlib.util
import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from parity import assert_close

from jaxris.text import clip_tokenizer
from jaxris.weights import clip as clip_weights
from jaxris.weights import fetch
from jaxris.weights.mapping import ConversionError
from jaxris.weights.random_torch import randomize_

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("convert_clip", os.path.join(_ROOT, "convert", "clip.py"))
cli = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cli)

# OpenAI's build_model infers heads as width / 64: widths 128 and 64 give 2 and 1 heads.
TEXT = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=1, vocab_size=49408,
            max_position_embeddings=77)
VISION = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=2, image_size=42,
              patch_size=14)
PHRASES = ["a photo of a cat", "the man on the left holding an umbrella", "it's 3 dogs!"]

_forward = nnx.jit(lambda model, ids, pixels: model(ids, pixels))


@pytest.fixture(scope="module")
def vocab_gz():
  return fetch.fetch_checkpoint("clip_vocab")  # cached after the first run; an error fails the tests


@pytest.fixture(scope="module")
def torch_model():
  config = transformers.CLIPConfig(text_config=TEXT, vision_config=VISION, projection_dim=32)
  return randomize_(transformers.CLIPModel(config), seed=3, std=0.05)


def _numpy(state_dict):
  return {k: v.detach().numpy() for k, v in state_dict.items()}


def _openai_layout(hf: dict) -> dict:
  """The HF CLIPModel state_dict under OpenAI's names (written here, independently of the converter)."""
  out = {"input_resolution": np.array(VISION["image_size"]), "context_length": np.array(77),
         "vocab_size": np.array(TEXT["vocab_size"])}
  for hf_tower, oa, config in (("vision_model", "visual.", VISION), ("text_model", "", TEXT)):
    for i in range(config["num_hidden_layers"]):
      src, dst = f"{hf_tower}.encoder.layers.{i}.", f"{oa}transformer.resblocks.{i}."
      for kind in ("weight", "bias"):
        out[dst + f"attn.in_proj_{kind}"] = np.concatenate([hf[src + f"self_attn.{p}_proj.{kind}"] for p in "qkv"])
        for a, b in (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"),
                     ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
          out[dst + f"{b}.{kind}"] = hf[src + f"{a}.{kind}"]
  for kind in ("weight", "bias"):
    out[f"visual.ln_pre.{kind}"] = hf[f"vision_model.pre_layrnorm.{kind}"]
    out[f"visual.ln_post.{kind}"] = hf[f"vision_model.post_layernorm.{kind}"]
    out[f"ln_final.{kind}"] = hf[f"text_model.final_layer_norm.{kind}"]
  out["visual.class_embedding"] = hf["vision_model.embeddings.class_embedding"]
  out["visual.positional_embedding"] = hf["vision_model.embeddings.position_embedding.weight"]
  out["visual.conv1.weight"] = hf["vision_model.embeddings.patch_embedding.weight"]
  out["visual.proj"] = hf["visual_projection.weight"].T
  out["token_embedding.weight"] = hf["text_model.embeddings.token_embedding.weight"]
  out["positional_embedding"] = hf["text_model.embeddings.position_embedding.weight"]
  out["text_projection"] = hf["text_projection.weight"].T
  out["logit_scale"] = hf["logit_scale"]
  return out


class _Holder(torch.nn.Module):
  """Tensors under dotted names, as a module TorchScript can save (OpenAI's .pt are such archives)."""

  def __init__(self, tensors: dict):
    super().__init__()
    children = {}
    for name, value in tensors.items():
      head, _, rest = name.partition(".")
      if rest:
        children.setdefault(head, {})[rest] = value
      elif value.is_floating_point():
        self.register_parameter(name, torch.nn.Parameter(value))
      else:
        self.register_buffer(name, value)
    for head, sub in children.items():
      self.add_module(head, _Holder(sub))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return x


def _save_torchscript(state_dict: dict, path) -> None:
  torch.jit.script(_Holder({k: torch.tensor(np.array(v)) for k, v in state_dict.items()})).save(str(path))


def _compare(model, tokenizer, torch_model, what):
  batch = tokenizer(PHRASES)
  pixels = np.random.default_rng(0).normal(size=(2, 3, 42, 42)).astype(np.float32)
  out = _forward(model, jnp.asarray(batch["input_ids"]), jnp.asarray(pixels.transpose(0, 2, 3, 1)))
  with torch.no_grad():
    ref = torch_model(input_ids=torch.tensor(batch["input_ids"], dtype=torch.long), pixel_values=torch.tensor(pixels))
    vision = torch_model.vision_model(pixel_values=torch.tensor(pixels))
    text = torch_model.text_model(input_ids=torch.tensor(batch["input_ids"], dtype=torch.long))
  assert_close(out.vision_model_output.last_hidden_state, vision.last_hidden_state, what=f"{what} vision tokens")
  assert_close(out.vision_model_output.pooler_output, vision.pooler_output, what=f"{what} vision pooled")
  assert_close(out.text_model_output.last_hidden_state, text.last_hidden_state, what=f"{what} text tokens")
  assert_close(out.text_model_output.pooler_output, text.pooler_output, what=f"{what} text pooled")
  for name in ("image_embeds", "text_embeds", "logits_per_image"):
    assert_close(getattr(out, name), getattr(ref, name), what=f"{what} {name}")


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_cli_converts_a_hf_directory(torch_model, vocab_gz, tmp_path, fmt, capsys):
  src, out = tmp_path / "hf", tmp_path / "converted"
  if fmt == "safetensors":
    torch_model.save_pretrained(src)
    shutil.copy(vocab_gz, src)
    expected = {clip_tokenizer.VOCAB_GZ}
  else:  # legacy pickle, and the Hugging Face tokenizer files
    src.mkdir()
    torch_model.config.save_pretrained(src)
    torch.save(torch_model.state_dict(), src / "pytorch_model.bin")
    vocab, merges = clip_tokenizer.read_vocab_gz(vocab_gz)
    (src / "vocab.json").write_text(__import__("json").dumps(vocab), encoding="utf-8")
    (src / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n",
                                    encoding="utf-8")
    expected = {"vocab.json", "merges.txt"}
  capsys.readouterr()
  assert cli.main(["--src", str(src), "--out", str(out)]) == 0
  assert "ViT 2 layers x 128" in capsys.readouterr().out
  assert {"config.json", "params.safetensors"} | expected <= set(os.listdir(out))
  for path in (out, src):  # converted directory, and the HF directory converted on the fly
    model, tokenizer = clip_weights.load(path)
    _compare(model, tokenizer, torch_model, f"{fmt} {path.name}")


def test_cli_converts_openai_torchscript_archive(torch_model, vocab_gz, tmp_path, capsys):
  """OpenAI's layout saved as a TorchScript archive (what clip.load downloads), the vocabulary
  beside it; the sizes come from the shapes."""
  pt = tmp_path / "openai" / "ViT-tiny.pt"
  pt.parent.mkdir()
  _save_torchscript(_openai_layout(_numpy(torch_model.state_dict())), pt)
  shutil.copy(vocab_gz, pt.parent)
  out = tmp_path / "converted"
  assert cli.main(["--src", str(pt), "--out", str(out)]) == 0
  assert "vocabulary: bpe_simple_vocab_16e6.txt.gz" in capsys.readouterr().out
  model, tokenizer = clip_weights.load(out)
  cfg = model.config
  assert (cfg.vision.num_attention_heads, cfg.text.num_attention_heads, cfg.vision.image_size, cfg.projection_dim,
          cfg.text.eos_token_id) == (2, 1, 42, 32, 2)  # OpenAI pools at the argmax of the ids
  _compare(model, tokenizer, torch_model, "OpenAI .pt converted")
  model, tokenizer = clip_weights.load(pt)  # converted on the fly
  _compare(model, tokenizer, torch_model, "OpenAI .pt on the fly")
  # The bridge's frozen CLIP: the vision tower alone, from the converted directory.
  vision = clip_weights.load_vision_model(out)
  pixels = np.random.default_rng(1).normal(size=(1, 3, 42, 42)).astype(np.float32)
  with torch.no_grad():
    ref = torch_model.vision_model(pixel_values=torch.tensor(pixels))
  got = nnx.jit(lambda m, x: m(x))(vision, jnp.asarray(pixels.transpose(0, 2, 3, 1)))
  assert_close(got.last_hidden_state, ref.last_hidden_state, what="vision tower alone")


def test_openai_plain_state_dict_and_vocab_flag(torch_model, vocab_gz, tmp_path):
  pt = tmp_path / "state_dict.pt"
  torch.save({k: torch.tensor(np.array(v)) for k, v in _openai_layout(_numpy(torch_model.state_dict())).items()}, pt)
  config, files = clip_weights.convert_dir(pt, tmp_path / "out", vocab=vocab_gz)
  assert files == [clip_tokenizer.VOCAB_GZ] and config.vision.num_hidden_layers == 2
  model, tokenizer = clip_weights.load(tmp_path / "out")
  _compare(model, tokenizer, torch_model, "OpenAI state_dict")


def test_openai_renames_and_splits():
  hf = _numpy(transformers.CLIPModel(transformers.CLIPConfig(text_config=TEXT, vision_config=VISION,
                                                             projection_dim=32)).state_dict())
  renamed = clip_weights.openai_to_hf(_openai_layout(hf))
  for key in ("vision_model.encoder.layers.1.self_attn.k_proj.weight",
              "text_model.encoder.layers.0.self_attn.v_proj.bias",
              "visual_projection.weight", "text_projection.weight", "vision_model.embeddings.class_embedding"):
    np.testing.assert_array_equal(renamed[key], hf[key], err_msg=key)
  assert set(renamed) - {"input_resolution", "context_length", "vocab_size"} == set(hf)


def test_strict_conversion_lists_every_problem(torch_model):
  config = clip_weights.CLIPConfig.from_hf_config(torch_model.config.to_dict())
  sd = _numpy(torch_model.state_dict())
  del sd["vision_model.encoder.layers.1.mlp.fc2.bias"]
  sd["text_model.encoder.layers.0.self_attn.rotary.weight"] = np.zeros(3, np.float32)
  sd["text_model.final_layer_norm.weight"] = np.zeros(65, np.float32)
  with pytest.raises(ConversionError) as err:
    clip_weights.convert_state_dict(sd, config)
  for name in ("vision_model.encoder.layers.1.mlp.fc2.bias", "text_model.encoder.layers.0.self_attn.rotary.weight",
               "text_model.final_layer_norm.weight"):
    assert name in str(err.value)
  # OpenAI layout: an unknown key and a missing block tensor are both named.
  oa = _openai_layout(_numpy(torch_model.state_dict()))
  del oa["visual.transformer.resblocks.0.ln_2.bias"]
  oa["visual.attn_pool.weight"] = np.zeros(2, np.float32)
  with pytest.raises(ConversionError) as err:
    clip_weights.convert_openai(oa)
  for name in ("vision_model.encoder.layers.0.layer_norm2.bias", "visual.attn_pool.weight"):
    assert name in str(err.value)
  with pytest.raises(ConversionError, match="ResNet"):
    clip_weights.convert_openai({"visual.layer1.0.conv1.weight": np.zeros(1, np.float32)})


def test_cli_errors_are_one_line_with_exit_code_2(torch_model, tmp_path, capsys):
  with pytest.raises(SystemExit) as help_exit:
    cli.main(["--help"])
  assert help_exit.value.code == 0 and "--src" in capsys.readouterr().out
  mismatch = tmp_path / "mismatch"  # the config says 3 vision layers, the weights have 2
  torch_model.save_pretrained(mismatch)
  transformers.CLIPConfig(text_config=TEXT, vision_config=dict(VISION, num_hidden_layers=3),
                          projection_dim=32).save_pretrained(mismatch)
  not_clip = tmp_path / "not_clip.pt"
  torch.save({"weight": torch.zeros(2)}, not_clip)
  corrupt = tmp_path / "corrupt.pt"
  corrupt.write_bytes(b"PK\x03\x04" + b"\x00" * 100)
  capsys.readouterr()
  for what, src in {"missing": tmp_path / "nowhere", "mismatch": mismatch, "not clip": not_clip,
                    "corrupt": corrupt}.items():
    assert cli.main(["--src", str(src), "--out", str(tmp_path / "out")]) == 2, what
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, (what, err)
    if what == "mismatch":
      assert "vision_model.encoder.layers.2.self_attn.q_proj.kernel" in err
    if what == "not clip":
      assert "not in OpenAI's CLIP layout" in err
    if what == "corrupt":
      assert "corrupt.pt" in err


def test_load_errors_name_the_path(torch_model, tmp_path, monkeypatch):
  monkeypatch.setenv(fetch.CACHE_ENV, str(tmp_path / "empty_cache"))  # no cached vocabulary to fall back on
  with pytest.raises(FileNotFoundError, match="nowhere"):
    clip_weights.load(tmp_path / "nowhere")
  torch_model.save_pretrained(tmp_path / "hf")
  with pytest.warns(UserWarning, match="fetch clip_vocab"):
    clip_weights.convert_dir(tmp_path / "hf", tmp_path / "out")
  with pytest.raises(FileNotFoundError, match="fetch clip_vocab --out"):
    clip_weights.load(tmp_path / "out")
  assert clip_weights.load_model(tmp_path / "out").config.vision.hidden_size == 128
