"""BertModel parity with transformers' BertModel: random weights in several shapes, and the real
all-MiniLM-L6-v2 weights, every hidden state compared, with padding in the batch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from parity import assert_close

from jaxris.models.bert import BertConfig, BertModel
from jaxris.weights import bert as bert_weights
from jaxris.weights import store


def _randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
  """Random values for every tensor: HF init leaves biases at 0 and LayerNorm at 1, which would
  hide a dropped or swapped bias/scale."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, t in module.named_parameters():
      std = 0.1 if t.ndim == 1 or "embeddings" in name else 0.05
      t.copy_(torch.randn(t.shape, generator=g) * std + (1.0 if name.endswith("LayerNorm.weight") else 0.0))
  return module.eval()


def _pair(hf_kwargs: dict, seed: int = 0, add_pooling_layer: bool = True, dtype=None):
  """A random transformers BertModel and our converted copy."""
  torch_model = _randomize(transformers.BertModel(transformers.BertConfig(**hf_kwargs),
                                                  add_pooling_layer=add_pooling_layer), seed)
  config = BertConfig.from_hf_config(torch_model.config.to_dict(), add_pooling_layer=add_pooling_layer)
  params = bert_weights.convert_state_dict({k: v.numpy() for k, v in torch_model.state_dict().items()}, config)
  # eval_shape: skip the random init (many small compiles), every parameter is assigned anyway.
  model = nnx.eval_shape(lambda: BertModel(config, rngs=nnx.Rngs(0), dtype=dtype))
  store.assign_params(model, params)
  return torch_model, model


_forward = nnx.jit(lambda model, *args, **kwargs: model(*args, **kwargs))


def _run(model, *args, **kwargs):
  """One compiled call, cached across tests by model structure and input shapes (eager NNX
  would compile every primitive separately, which is far slower)."""
  return _forward(model, *(jnp.asarray(a) for a in args), **kwargs)


def _inputs(batch: int, length: int, vocab: int, type_vocab: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, vocab, (batch, length))
  mask = np.ones((batch, length), np.int64)
  for i in range(1, batch):  # every row but the first is padded, by a different amount
    mask[i, max(1, length - 2 * i):] = 0
  ids = np.where(mask == 1, ids, 0)
  types = rng.integers(0, type_vocab, (batch, length))
  return ids, mask, types


def _compare(ours, theirs, what):
  assert len(ours.hidden_states) == len(theirs.hidden_states)
  for i, (a, b) in enumerate(zip(ours.hidden_states, theirs.hidden_states)):
    assert_close(a, b, what=f"{what} hidden_states[{i}]")
  assert_close(ours.last_hidden_state, theirs.last_hidden_state, what=f"{what} last_hidden_state")
  if theirs.pooler_output is None:
    assert ours.pooler_output is None
  else:
    assert_close(ours.pooler_output, theirs.pooler_output, what=f"{what} pooler_output")


# name -> (transformers BertConfig kwargs, what the call is given)
CASES = {
    # odd sizes: head dim 24, intermediate not a multiple of anything, three token types
    "odd": (dict(vocab_size=101, hidden_size=96, num_attention_heads=4, intermediate_size=200,
                 type_vocab_size=3, num_hidden_layers=2, max_position_embeddings=40),
            dict(mask=True, types=True, pooler=True)),
    # eager attention (additive mask) as reference; no mask or token types given; no pooler
    "relu-eps1e-5-eager-defaults": (dict(vocab_size=60, hidden_size=64, num_attention_heads=2,
                                         intermediate_size=128, num_hidden_layers=2, hidden_act="relu",
                                         layer_norm_eps=1e-5, max_position_embeddings=16,
                                         attn_implementation="eager"),
                                    dict(mask=False, types=False, pooler=False)),
    "gelu_new-8heads": (dict(vocab_size=50, hidden_size=128, num_attention_heads=8, intermediate_size=96,
                             num_hidden_layers=1, hidden_act="gelu_new", type_vocab_size=1,
                             max_position_embeddings=24),
                        dict(mask=True, types=True, pooler=True)),
}
ODD = CASES["odd"][0]
SMALL = CASES["gelu_new-8heads"][0]


@pytest.mark.parametrize("name", list(CASES))
def test_random_weights_match_transformers(name):
  hf, given = CASES[name]
  torch_model, model = _pair(hf, seed=len(name), add_pooling_layer=given["pooler"])
  ids, mask, types = _inputs(8, 11, hf["vocab_size"], hf.get("type_vocab_size", 2))
  args = [ids] + ([mask] if given["mask"] else []) + ([types] if given["types"] else [])
  with torch.no_grad():
    ref = torch_model(*(torch.tensor(a) for a in args), output_hidden_states=True)
  out = _run(model, *args)
  assert len(out.hidden_states) == hf["num_hidden_layers"] + 1
  assert (out.pooler_output is None) == (not given["pooler"])
  _compare(out, ref, name)


def test_minilm_real_weights_match_transformers():
  """The shipped all-MiniLM-L6-v2 checkpoint, tokenized real sentences padded to a common length."""
  path = bert_weights.minilm_dir()
  model, tokenizer = bert_weights.load(path, max_length=24)
  torch_model = transformers.BertModel.from_pretrained(str(path), local_files_only=True).eval()
  batch = tokenizer(["the man on the left holding an umbrella", "a dog", "Zebra #2, far right (striped)!"])
  assert batch["attention_mask"].sum(1).min() < 24  # there is padding in the batch
  with torch.no_grad():
    ref = torch_model(**{k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}, output_hidden_states=True)
  out = _run(model, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
  assert len(out.hidden_states) == 7
  _compare(out, ref, "MiniLM")


def test_jit_over_a_data_sharded_batch_matches_eager():
  """The forward pass under jax.jit with the batch split over 8 (simulated) devices."""
  _, model = _pair(ODD, seed=5)
  ids, mask, types = _inputs(8, 11, 101, 3, seed=1)
  mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
  shard = lambda x: jax.device_put(jnp.asarray(x), NamedSharding(mesh, P("data")))
  graphdef, state = nnx.split(model)
  forward = jax.jit(lambda state, *a: nnx.merge(graphdef, state)(*a))
  out = forward(state, shard(ids), shard(mask), shard(types))
  single = _run(model, ids, mask, types)
  assert out.last_hidden_state.sharding.spec[0] == "data"
  for a, b in zip(out.hidden_states, single.hidden_states):
    assert_close(a, b, what="sharded vs single device")


def test_bfloat16_compute_keeps_float32_params_and_stays_close():
  torch_model, model = _pair(SMALL, seed=7, dtype=jnp.bfloat16)
  assert all(v.dtype == jnp.float32 for v in store.flat_params(model).values())
  ids, mask, types = _inputs(3, 8, SMALL["vocab_size"], 1)
  with torch.no_grad():
    ref = torch_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                      token_type_ids=torch.tensor(types))
  out = _run(model, ids, mask, types)
  assert out.last_hidden_state.dtype == jnp.bfloat16
  assert_close(out.last_hidden_state, ref.last_hidden_state, tol=5e-2, what="bf16 last_hidden_state")


def test_all_padding_row_is_finite_and_leaves_other_rows_alone():
  # Batches padded to a multiple of the device count contain rows with no real token.
  _, model = _pair(ODD, seed=2)
  ids, mask, types = _inputs(8, 11, 101, 3)
  full = _run(model, ids, mask, types)
  mask[-1] = 0
  out = _run(model, ids, mask, types)
  assert np.all(np.isfinite(np.asarray(out.last_hidden_state)))
  np.testing.assert_array_equal(np.asarray(out.last_hidden_state[:-1]), np.asarray(full.last_hidden_state[:-1]))


def test_config_from_hf_config(tmp_path):
  hf = transformers.BertConfig(**ODD)
  hf.save_pretrained(tmp_path)
  from_dir = BertConfig.from_hf_config(tmp_path)
  from_file = BertConfig.from_hf_config(tmp_path / "config.json")
  from_dict = BertConfig.from_hf_config(hf.to_dict())
  assert from_dir == from_file == from_dict
  assert (from_dir.hidden_size, from_dir.num_attention_heads, from_dir.intermediate_size,
          from_dir.type_vocab_size, from_dir.max_position_embeddings) == (96, 4, 200, 3, 40)
  assert BertConfig.from_hf_config({}) == BertConfig()  # transformers' defaults (BERT-base)
  with pytest.raises(ValueError, match="position_embedding_type"):
    BertConfig.from_hf_config({"position_embedding_type": "relative_key"})
  with pytest.raises(ValueError, match="hidden_act"):
    BertConfig.from_hf_config({"hidden_act": "swiglu"})
  with pytest.raises(ValueError, match="multiple"):
    BertConfig.from_hf_config({"hidden_size": 100, "num_attention_heads": 3})
  with pytest.raises(ValueError, match="decoder"):
    BertConfig.from_hf_config({"is_decoder": True})
  with pytest.raises(FileNotFoundError, match="config.json"):
    BertConfig.from_hf_config(tmp_path / "nowhere")


def test_bad_inputs_are_refused():
  _, model = _pair(ODD)
  with pytest.raises(ValueError, match="max_position_embeddings"):
    _run(model, np.zeros((1, 41), np.int32))
  with pytest.raises(ValueError, match="attention_mask shape"):
    _run(model, np.zeros((2, 5), np.int32), np.ones((2, 4), np.int32))
  with pytest.raises(ValueError, match=r"\[batch, length\]"):
    _run(model, np.zeros((5,), np.int32))


def test_dropout_runs_in_training_mode_only():
  """A call with a 'dropout' rng is training mode (transformers' model.train(): dropout 0.1 in the
  embeddings, attention weights and both residual branches); without rngs it is eval mode. Before the
  fix BERT's dropout layers were built deterministic and never ran, even while training DIT."""
  _, model = _pair(dict(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=16))
  ids, mask, _ = _inputs(2, 8, 50, 2)
  ids, mask = jnp.asarray(ids), jnp.asarray(mask)
  train = nnx.jit(lambda m, key: m(ids, mask, rngs=nnx.Rngs(dropout=key)).hidden_states)
  evaluate = nnx.jit(lambda m: m(ids, mask).hidden_states)
  # "rbg" keys: XLA's RngBitGenerator compiles much faster on CPU than threefry.
  key = lambda seed: jax.random.key(seed, impl="rbg")
  a, b = train(model, key(0)), train(model, key(1))
  for layer in range(3):  # the embeddings' output and both layers differ between two dropout draws
    assert not np.allclose(np.asarray(a[layer]), np.asarray(b[layer])), layer
  np.testing.assert_array_equal(np.asarray(train(model, key(0))[2]), np.asarray(a[2]))
  np.testing.assert_array_equal(np.asarray(evaluate(model)[2]), np.asarray(evaluate(model)[2]))
  # Rate 0 (a recipe's bert_dropout=0, e.g. a frozen text encoder) equals eval mode.
  import dataclasses
  quiet = BertModel(dataclasses.replace(model.config, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
                    rngs=nnx.Rngs(0))
  nnx.update(quiet, nnx.state(model))
  np.testing.assert_allclose(np.asarray(train(quiet, key(0))[2]), np.asarray(evaluate(model)[2]),
                             rtol=0, atol=1e-6)
