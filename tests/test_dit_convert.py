"""DIT checkpoints exactly as the official train.py saves them -> jaxris.weights.dit.

train.py saves ``{'epoch', 'state_dict': {'module.<key>': tensor}, 'optimizer', 'scheduler', 'lr'}``
(a DDP model, Adam and its scheduler). from_torch must take that dict as torch.load returns it, and a
path to the file, and give the same model as the bare state_dict.
"""

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
from jaxris.weights.random_torch import randomize_
from parity import assert_close
from sam_fixtures import nhwc

BERT = dict(hidden_size=96, num_hidden_layers=2, num_attention_heads=4, intermediate_size=200, vocab_size=300)


@pytest.fixture(scope="module")
def released(tmp_path_factory):
  """(reference model, path of its train.py-style last.pth)."""
  torch.manual_seed(0)
  ref = randomize_(DitNet("ldit", img_size=256, bert_config=HFBertConfig(**BERT)), seed=3)
  # Adam as the official recipe (betas 0.9/0.98, eps 1e-9) with warm-up + cosine through LambdaLR; one
  # step, so the optimizer state holds tensors (exp_avg, exp_avg_sq) next to the weights.
  params = [p for p in ref.parameters() if p.requires_grad]
  optimizer = torch.optim.Adam(params, lr=1e-4, betas=(0.9, 0.98), eps=1e-9)
  scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 10))
  for p in params:
    p.grad = torch.zeros_like(p)
  optimizer.step()
  scheduler.step()
  path = tmp_path_factory.mktemp("dit") / "last.pth"
  torch.save({"epoch": 7, "state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()},
              "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
              "lr": scheduler.get_last_lr()[0]}, path)
  return ref.eval(), path


def test_training_checkpoint_converts_like_the_state_dict(released):
  ref, path = released
  bert = BertConfig(**BERT)
  direct = store.flat_params(dit_weights.from_torch(ref.state_dict(), "ldit", bert=bert))
  loaded = torch.load(path, map_location="cpu", weights_only=True)
  assert {"epoch", "state_dict", "optimizer", "scheduler", "lr"} == set(loaded)
  for source in (loaded, path, str(path)):  # torch.load's dict, and the file itself
    model = dit_weights.from_torch(source, "ldit", bert=bert)
    params = store.flat_params(model)
    assert params.keys() == direct.keys()
    for k in direct:
      np.testing.assert_array_equal(np.asarray(params[k]), np.asarray(direct[k]), err_msg=k)

  g = torch.Generator().manual_seed(0)
  images, ids = torch.randn(2, 3, 128, 128, generator=g), torch.randint(1, 300, (2, 20), generator=g)
  mask = torch.ones(2, 20, dtype=torch.int64)
  mask[0, 7:] = 0
  with torch.no_grad():
    expected = ref(images, ids, mask)
  ours = nnx.jit(lambda m, *a: m(*a))(model, jnp.asarray(nhwc(images)), jnp.asarray(ids.numpy()),
                                      jnp.asarray(mask.numpy()))
  assert_close(ours, expected, what="DIT from last.pth")


def test_read_checkpoint_drops_the_training_state_unread(released):
  ref, path = released
  sd = dit_weights.read_checkpoint(path)
  assert set(sd) == set(ref.state_dict())  # no module. prefix, no optimizer / scheduler entries
  key = "visual_encoder.blocks.0.attn.qkv.weight"
  np.testing.assert_array_equal(sd[key], ref.state_dict()[key].numpy())
