"""DIT-SAM parity: jaxris RisSam against the PyTorch reference of the official forward (tests/dit_reference.py)."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from transformers import BertConfig as HFBertConfig

from dit_reference import DitNet
from jaxris.models.bert import BertConfig
from jaxris.weights import dit as dit_weights
from jaxris.weights.random_torch import randomize_
from parity import assert_close
from sam_fixtures import nhwc

BERT = dict(hidden_size=96, num_hidden_layers=2, num_attention_heads=4, intermediate_size=200, vocab_size=300)


def _inputs(batch=2, size=128, seed=0):
  g = torch.Generator().manual_seed(seed)
  images = torch.randn(batch, 3, size, size, generator=g)
  ids = torch.randint(1, 300, (batch, 20), generator=g)
  mask = torch.ones(batch, 20, dtype=torch.int64)
  mask[0, 7:] = 0  # padding in the batch
  return images, ids, mask


@nnx.jit
def _forward(model, images, ids, mask):
  return model(images, ids, mask)


def _compare(ref, scheme, size=128, **kw):
  ref = randomize_(ref, seed=1)
  model = dit_weights.from_torch(ref.state_dict(), scheme, bert=BertConfig(**BERT), **kw)
  images, ids, mask = _inputs(size=size)
  with torch.no_grad():
    expected = ref(images, ids, mask)
  ours = _forward(model, jnp.asarray(nhwc(images)), jnp.asarray(ids.numpy()), jnp.asarray(mask.numpy()))
  assert ours.shape == (2, size, size)
  assert_close(ours, expected, what=f"{scheme} logits")
  return model


@pytest.mark.parametrize("scheme", ["ldit", "edit", "default"])
def test_scheme_matches_reference(scheme):
  # SAM checkpoint shapes for 256 px (16x16 pos_embed, 31/27-row tables) run at 128 px: the position
  # embedding is resized bicubically and every table linearly, as DIT does at 512 with SAM's 1024 shapes.
  torch.manual_seed(0)
  ref = DitNet(scheme, img_size=256, bert_config=HFBertConfig(**BERT))
  _compare(ref, scheme)


def test_add_decoder_layers_and_last_bert_layer():
  torch.manual_seed(0)
  ref = DitNet("default", img_size=256, decoder_depth=4, bert_config=HFBertConfig(**BERT), bert_layer=2)
  model = _compare(ref, "default", bert_layer=2)
  assert model.cfg.extra_decoder_layers == 2 and len(model.mask_decoder.transformer.layers) == 4


def test_ldit_text_width_differs_from_vit():
  # ViT-H's layout: BERT 96 -> ViT 128 through prob_text, then per-block probs.
  torch.manual_seed(0)
  ref = DitNet("ldit", embed_dim=128, num_heads=4, img_size=256, bert_config=HFBertConfig(**BERT))
  assert "visual_encoder.prob_text.weight" in ref.state_dict()
  _compare(ref, "ldit")


def test_text_changes_the_mask_and_zero_init_probs_do_not():
  from jaxris.models.ris.dit_sam import RisConfig, RisSam
  from jaxris.models.sam.sam import sam_config
  cfg = RisConfig(scheme="ldit", sam=sam_config("vit_b", img_size=256, embed_dim=64, depth=2, num_heads=2),
                  bert=BertConfig(**BERT))
  model = RisSam(cfg, rngs=nnx.Rngs(0))
  images, ids, mask = _inputs(size=64)
  a = jnp.asarray(nhwc(images))
  base = _forward(model, a, jnp.asarray(ids.numpy()), jnp.asarray(mask.numpy()))
  other = _forward(model, a, jnp.asarray(ids.numpy()[::-1].copy()), jnp.asarray(mask.numpy()))
  assert not np.allclose(base, other), "the text must reach the mask (sparse prompts)"
  # Zero-initialised probs: the encoder's image features ignore the text at initialisation.
  text = model.encode_text(jnp.asarray(ids.numpy()), jnp.asarray(mask.numpy()))
  feats_a = model.visual_encoder(a, text)
  feats_b = model.visual_encoder(a, text[::-1])
  np.testing.assert_allclose(np.asarray(feats_a), np.asarray(feats_b), atol=1e-6)


@pytest.mark.slow
def test_ldit_vit_b_at_512_with_bert_base():
  # Full-width L-DIT ViT-B (reduced to 4 blocks with one global) with full BERT-base width, 512 input.
  torch.manual_seed(0)
  bert = dict(hidden_size=768, num_hidden_layers=1, num_attention_heads=12, intermediate_size=3072, vocab_size=300)
  ref = DitNet("ldit", embed_dim=768, depth=4, num_heads=12, global_attn_indexes=(2,), img_size=1024,
               bert_config=HFBertConfig(**bert))
  ref = randomize_(ref, seed=1, std=0.02)
  model = dit_weights.from_torch(ref.state_dict(), "ldit", bert=BertConfig(**bert))
  images, ids, mask = _inputs(batch=1, size=512)
  with torch.no_grad():
    expected = ref(images, ids % 300, mask[:1])
  ours = _forward(model, jnp.asarray(nhwc(images)), jnp.asarray((ids % 300).numpy()), jnp.asarray(mask[:1].numpy()))
  assert_close(ours, expected, what="L-DIT ViT-B 512 logits")
