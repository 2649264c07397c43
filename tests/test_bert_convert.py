"""The BERT converter: renames and transposes, prefixed and gamma/beta checkpoints, strictness,
Hugging Face directories in both formats through the CLI, and the converted all-MiniLM-L6-v2
giving sentence-transformers' sentence embeddings."""

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

from jaxris.models.bert import BertConfig
from jaxris.weights import bert as bert_weights
from jaxris.weights.mapping import ConversionError

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("convert_bert", os.path.join(_ROOT, "convert", "bert.py"))
cli = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cli)

TINY = dict(vocab_size=30522, hidden_size=96, num_attention_heads=4, intermediate_size=200, type_vocab_size=3,
            num_hidden_layers=2, max_position_embeddings=40)
_forward = nnx.jit(lambda model, *args: model(*args))


def _random_state(module: torch.nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for t in module.parameters():
      t.copy_(torch.randn(t.shape, generator=g) * 0.05)
  return module.eval().state_dict()


def _numpy(state_dict):
  return {k: v.numpy() for k, v in state_dict.items()}


def test_renames_and_transposes():
  torch_model = transformers.BertModel(transformers.BertConfig(**TINY))
  sd = _numpy(_random_state(torch_model))
  params = bert_weights.convert_state_dict(sd, BertConfig(**TINY))
  np.testing.assert_array_equal(params["encoder.layer.1.attention.self.query.kernel"],
                                sd["encoder.layer.1.attention.self.query.weight"].T)
  np.testing.assert_array_equal(params["encoder.layer.0.intermediate.dense.kernel"],
                                sd["encoder.layer.0.intermediate.dense.weight"].T)
  np.testing.assert_array_equal(params["encoder.layer.0.output.LayerNorm.scale"],
                                sd["encoder.layer.0.output.LayerNorm.weight"])
  np.testing.assert_array_equal(params["embeddings.token_type_embeddings.embedding"],
                                sd["embeddings.token_type_embeddings.weight"])
  np.testing.assert_array_equal(params["pooler.dense.bias"], sd["pooler.dense.bias"])
  assert len(params) == 5 + 16 * 2 + 2


def test_bert_prefix_gamma_beta_and_pretraining_heads():
  """BertForPreTraining keys ('bert.' prefix, cls.* heads), old LayerNorm names: same params."""
  pretraining = transformers.BertForPreTraining(transformers.BertConfig(**TINY))
  sd = _numpy(_random_state(pretraining, seed=1))
  assert any(k.startswith("cls.") for k in sd) and all(k.startswith(("bert.", "cls.")) for k in sd)
  old_style = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
               for k, v in sd.items()}
  plain = {k.removeprefix("bert."): v for k, v in sd.items() if k.startswith("bert.")}
  expected = bert_weights.convert_state_dict(plain, BertConfig(**TINY))
  for source in (sd, old_style):
    params = bert_weights.convert_state_dict(source, BertConfig(**TINY))
    assert params.keys() == expected.keys()
    for k in expected:
      np.testing.assert_array_equal(params[k], expected[k], err_msg=k)


def test_strict_conversion_lists_every_problem():
  sd = _numpy(transformers.BertModel(transformers.BertConfig(**TINY)).state_dict())
  del sd["encoder.layer.1.output.dense.bias"]
  sd["encoder.layer.0.attention.self.rotary.weight"] = np.zeros(3, np.float32)
  sd["encoder.layer.0.intermediate.dense.weight"] = np.zeros((201, 96), np.float32)
  sd["encoder.layer.0.attention.self.query.bias"] = sd.pop("encoder.layer.0.attention.self.query.bias")
  with pytest.raises(ConversionError) as err:
    bert_weights.convert_state_dict(sd, BertConfig(**TINY))
  message = str(err.value)
  for name in ("encoder.layer.1.output.dense.bias", "encoder.layer.0.attention.self.rotary.weight",
               "encoder.layer.0.intermediate.dense.weight"):
    assert name in message
  # Both spellings of one tensor: a duplicate, not a silent overwrite.
  sd = _numpy(transformers.BertModel(transformers.BertConfig(**TINY)).state_dict())
  sd["bert.pooler.dense.bias"] = sd["pooler.dense.bias"]
  with pytest.raises(ConversionError, match="duplicated"):
    bert_weights.convert_state_dict(sd, BertConfig(**TINY))


def _hf_dir(path, fmt: str, add_pooling_layer: bool = True):
  """A Hugging Face style directory with a random BERT, the MiniLM vocabulary and tokenizer config."""
  torch_model = transformers.BertModel(transformers.BertConfig(**TINY), add_pooling_layer=add_pooling_layer)
  sd = _random_state(torch_model, seed=2)
  torch_model.config.save_pretrained(path)
  if fmt == "safetensors":
    torch_model.save_pretrained(path)
  else:  # legacy pickle of a BertFor* model: prefixed keys, old LayerNorm names
    legacy = {"bert." + k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
              for k, v in sd.items()}
    torch.save(legacy, os.path.join(path, "pytorch_model.bin"))
  for f in ("vocab.txt", "tokenizer_config.json"):
    shutil.copy(bert_weights.minilm_dir() / f, path / f)
  assert set(os.listdir(path)) >= {"config.json", "vocab.txt",
                                   "model.safetensors" if fmt == "safetensors" else "pytorch_model.bin"}
  return torch_model


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_cli_converts_a_hf_directory_and_load_reads_both(tmp_path, fmt, capsys):
  src, out = tmp_path / "hf", tmp_path / "converted"
  src.mkdir()
  torch_model = _hf_dir(src, fmt)
  assert cli.main(["--src", str(src), "--out", str(out)]) == 0
  assert "2 layers" in capsys.readouterr().out
  assert {"config.json", "params.safetensors", "vocab.txt", "tokenizer_config.json"} <= set(os.listdir(out))

  batch = None
  for path in (out, src):  # converted directory, and the HF directory converted on the fly
    model, tokenizer = bert_weights.load(path, max_length=12)
    batch = tokenizer(["a red car parked on the left", "dog"])
    result = _forward(model, *(jnp.asarray(batch[k]) for k in ("input_ids", "attention_mask", "token_type_ids")))
    with torch.no_grad():
      ref = torch_model(**{k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()})
    assert_close(result.last_hidden_state, ref.last_hidden_state, what=f"{fmt} {path.name}")
    assert_close(result.pooler_output, ref.pooler_output, what=f"{fmt} {path.name} pooler")


def test_bfloat16_safetensors_are_read_as_float32(tmp_path):
  from safetensors.torch import save_file

  torch_model = transformers.BertModel(transformers.BertConfig(**TINY))
  sd = {k: v.to(torch.bfloat16) for k, v in _random_state(torch_model, seed=4).items() if v.is_floating_point()}
  save_file(sd, tmp_path / "model.safetensors")
  torch_model.config.save_pretrained(tmp_path)
  _, params = bert_weights.convert_hf_dir(tmp_path)
  kernel = params["encoder.layer.0.attention.self.key.kernel"]
  assert kernel.dtype == np.float32
  np.testing.assert_array_equal(kernel, sd["encoder.layer.0.attention.self.key.weight"].float().numpy().T)


def test_checkpoint_without_pooler_gives_a_model_without_pooler(tmp_path):
  _hf_dir(tmp_path, "safetensors", add_pooling_layer=False)
  config, params = bert_weights.convert_hf_dir(tmp_path)
  assert not config.add_pooling_layer and not any(k.startswith("pooler") for k in params)


def test_cli_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
  with pytest.raises(SystemExit) as help_exit:
    cli.main(["--help"])
  assert help_exit.value.code == 0 and "--src" in capsys.readouterr().out

  cases = {"missing": tmp_path / "nowhere", "no weights": tmp_path / "empty"}
  (tmp_path / "empty").mkdir()
  transformers.BertConfig(**TINY).save_pretrained(tmp_path / "empty")
  mismatch = tmp_path / "mismatch"  # config says 3 layers, weights have 2
  mismatch.mkdir()
  _hf_dir(mismatch, "safetensors")
  transformers.BertConfig(**dict(TINY, num_hidden_layers=3)).save_pretrained(mismatch)
  cases["mismatch"] = mismatch
  corrupt = tmp_path / "corrupt"
  corrupt.mkdir()
  transformers.BertConfig(**TINY).save_pretrained(corrupt)
  (corrupt / "model.safetensors").write_bytes(b"\x00" * 100)
  cases["corrupt"] = corrupt
  capsys.readouterr()  # drop save_pretrained's progress bars
  for what, src in cases.items():
    assert cli.main(["--src", str(src), "--out", str(tmp_path / "out")]) == 2, what
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, (what, err)
    if what == "mismatch":  # every missing name is listed
      assert "encoder.layer.2.attention.self.query.kernel" in err and "encoder.layer.2.output.dense.bias" in err
    if what == "corrupt":
      assert "model.safetensors" in err


def test_load_errors_name_the_path(tmp_path):
  with pytest.raises(FileNotFoundError, match="nowhere"):
    bert_weights.load(tmp_path / "nowhere")
  _hf_dir(tmp_path, "safetensors")
  with open(tmp_path / "vocab.txt", "a") as f:  # one token more than the model's 30522 embeddings
    f.write("[extra]\n")
  with pytest.raises(ValueError, match="30523 tokens"):
    bert_weights.load(tmp_path)
  os.remove(tmp_path / "vocab.txt")
  with pytest.raises(FileNotFoundError, match="vocab.txt"):
    bert_weights.load(tmp_path)


def test_converted_minilm_gives_sentence_transformers_embeddings(tmp_path):
  from sentence_transformers import SentenceTransformer

  sentences = ["the man on the left holding an umbrella", "A dog.", "Zebra #2 — far right, striped!", ""]
  assert cli.main(["--src", "minilm", "--out", str(tmp_path)]) == 0
  model, tokenizer = bert_weights.load(tmp_path, max_length=32)
  with pytest.warns(UserWarning, match="no tokens"):
    batch = tokenizer(sentences)
  hidden = _forward(model, *(jnp.asarray(batch[k]) for k in ("input_ids", "attention_mask", "token_type_ids")))
  mask = batch["attention_mask"][..., None].astype(np.float32)
  mean = (np.asarray(hidden.last_hidden_state) * mask).sum(1) / mask.sum(1)  # sentence-transformers' mean pooling
  ours = mean / np.linalg.norm(mean, axis=1, keepdims=True)

  reference = SentenceTransformer(str(bert_weights.minilm_dir()), device="cpu")
  expected = reference.encode(sentences, convert_to_numpy=True)
  assert_close(ours, expected, what="sentence embeddings")
  np.testing.assert_allclose(np.linalg.norm(expected, axis=1), 1.0, atol=1e-5)
