"""EVF-SAM parity: jaxris EvfSam (+ the pipeline's evf recipe + EvfPredictor) against the PyTorch
reference of the official model and preprocessing (tests/evf_reference.py), random weights.

Small sizes keep it quick: SAM's ViT-B layout at width 128 and depth 2 (at 1024 input, so pre-
and post-processing are SAM's own; the full width costs 4x the file's time), BEiT-3 base width at 2 layers with a small vocabulary, and a
sentencepiece model trained here (no beit3.spm download in tests).
"""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from transformers import AutoTokenizer

import evf_reference as ref_lib
from jaxris.data.transforms import preprocess, preprocess_config
from jaxris.text.xlmr_tokenizer import XlmrTokenizer
from jaxris.metrics import restore_original
from jaxris.models.beit3 import BEiT3Config
from jaxris.models.ris.evf import EvfConfig, EvfSam
from jaxris.inference.evf_predictor import EvfPredictor
from jaxris.models.sam.sam import sam_config
from jaxris.weights import evf_sam, store
from parity import assert_close
from sam_fixtures import nhwc

@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  torch.set_num_threads(1)  # a second thread mostly spin-waits on this shared 2-core machine
  tok_dir = tmp_path_factory.mktemp("tok")
  ref_lib.write_tokenizer(tok_dir)
  ref = ref_lib.reference_model()
  model = evf_sam.from_torch(ref.state_dict())
  official_tok = AutoTokenizer.from_pretrained(str(tok_dir), padding_side="right", use_fast=False)
  predictor = EvfPredictor.from_model(model, XlmrTokenizer(str(tok_dir)))
  rng = np.random.default_rng(0)
  images = [rng.integers(0, 256, (90, 140, 3), dtype=np.uint8), rng.integers(0, 256, (130, 75, 3), dtype=np.uint8)]
  return ref, model, official_tok, predictor, images


def official_inputs(images):
  sam = [ref_lib.sam_preprocess(im) for im in images]
  return (torch.stack([s[0] for s in sam]), torch.stack([ref_lib.beit3_preprocess(im) for im in images]),
          [s[1] for s in sam], [im.shape[:2] for im in images])


def test_config_round_trip_and_errors():
  cfg = EvfConfig(fusion="late", pooling="mean", multimask=True)
  assert EvfConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
  assert EvfConfig().sam.encoder.embed_dim == 1280 and EvfConfig().beit3.encoder_embed_dim == 1024
  with pytest.raises(ValueError, match="no vision"):
    EvfConfig(fusion="text")
  with pytest.raises(ValueError, match="fusion"):
    EvfConfig(fusion="middle")


def test_predict_batch_matches_official_forward(setup):
  # Several prompts per image, right-padded with an attention mask, as utils/dataset.py collates them.
  ref, _, official_tok, predictor, images = setup
  prompts = [["zebra top left", "the man on the left holding an umbrella"], ["sky"]]
  sam_images, evf_images, resize, orig = official_inputs(images)
  ids, mask = ref_lib.collate_prompts(official_tok, [p for ps in prompts for p in ps])
  assert not mask.all()  # padding is exercised
  with torch.no_grad():
    expected = ref(sam_images, evf_images, ids, mask, torch.tensor([0, 2, 3]), resize, orig)
  ours = predictor.predict_batch(images, prompts)
  for i, (o, e) in enumerate(zip(ours, expected)):
    assert o.shape == (len(prompts[i]),) + images[i].shape[:2]
    err = assert_close(o, e, what=f"image {i} logits")
    print(f"predict_batch image {i}: relative max error {err:.2e}")


def test_single_prompt_matches_official_inference(setup):
  # inference.py: one prompt, no padding mask, EvfSamModel.inference.
  ref, _, official_tok, predictor, images = setup
  sam_images, evf_images, resize, orig = official_inputs(images[1:])
  ids = official_tok("second elephant from the right", return_tensors="pt")["input_ids"]
  with torch.no_grad():
    expected = ref.inference(sam_images, evf_images, ids, resize, orig)[0]
  err = assert_close(predictor.predict(images[1], "second elephant from the right"), expected, what="logits")
  print(f"predict: relative max error {err:.2e}")


def test_second_phrase_on_an_image_reuses_its_sam_embedding(setup):
  """predict() keeps the last images' SAM embeddings: a new phrase (or prompt) on the same image runs
  only BEiT-3 and the decoder, with the official answer; a new image is encoded."""
  ref, _, official_tok, predictor, images = setup
  image = images[0].copy()
  predictor.predict(image, "the zebra")
  before = predictor.encodes
  got = predictor.predict(image.copy(), "the left elephant")  # equal pixels, another array
  assert predictor.encodes == before
  sam_images, evf_images, resize, orig = official_inputs([image])
  ids = official_tok("the left elephant", return_tensors="pt")["input_ids"]
  with torch.no_grad():
    expected = ref.inference(sam_images, evf_images, ids, resize, orig)[0]
  assert_close(got, expected, what="logits from the cached embedding")
  predictor.predict(np.ascontiguousarray(image[::-1]), "the zebra")  # an image not seen before
  assert predictor.encodes == before + 1


def test_call_one_prompt_per_image_matches_official_forward(setup):
  # The training / evaluation path: pipeline batch -> EvfSam.__call__ -> restore_original.
  ref, model, official_tok, predictor, images = setup
  texts = ["woman in a blue shirt", "sky"]
  cfg = preprocess_config("evf", size=1024)
  inputs = [preprocess(im, None, t, cfg) for im, t in zip(images, texts)]
  tokens = predictor.tokenizer([x["text"] for x in inputs])
  batch = {"image": np.stack([x["image"] for x in inputs]), "image_evf": np.stack([x["image_evf"] for x in inputs]),
           **tokens}
  logits = nnx.jit(lambda m, *a: m(*a))(model, *(jnp.asarray(batch[k]) for k in EvfSam.BATCH_INPUTS))
  assert logits.shape == (2, 1024, 1024)
  restored = restore_original(np.asarray(logits), {k: np.stack([x[k] for x in inputs])
                                                   for k in ("orig_size", "resized_size", "pad_offset")})
  sam_images, evf_images, resize, orig = official_inputs(images)
  ids, mask = ref_lib.collate_prompts(official_tok, texts)
  with torch.no_grad():
    expected = ref(sam_images, evf_images, ids, mask, torch.tensor([0, 1, 2]), resize, orig)
  for i in range(2):
    err = assert_close(restored[i], expected[i][0], what=f"image {i} logits")
    print(f"__call__ image {i}: relative max error {err:.2e}")


def test_points_and_box_with_text_match_official_prompt_encoder(setup):
  # [point tokens, box corners, text token], as EVF-SAM's prompt encoder concatenates them.
  ref, _, official_tok, predictor, images = setup
  image, text = images[0], "zebra top left"
  points, box = np.array([[30.0, 40.0, 1], [100.0, 20.0, 0]]), np.array([10.0, 5.0, 120.0, 80.0])
  sam_images, evf_images, resize, orig = official_inputs([image])
  scale = np.array([resize[0][1] / image.shape[1], resize[0][0] / image.shape[0]])  # (x, y) into the 1024 frame
  ids = official_tok(text, return_tensors="pt")["input_ids"]
  t_points = (torch.tensor(points[None, :, :2] * scale, dtype=torch.float32), torch.tensor(points[None, :, 2].astype(np.int64)))
  t_box = torch.tensor((box.reshape(2, 2) * scale).reshape(1, 4), dtype=torch.float32)
  with torch.no_grad():
    expected = ref.inference(sam_images, evf_images, ids, resize, orig, points=t_points, boxes=t_box)[0]
  err = assert_close(predictor.predict(image, text, points=points, boxes=box), expected, what="logits")
  print(f"predict with points and a box: relative max error {err:.2e}")


def test_multimask_keeps_the_best_mask(setup):
  # EVF-SAM2's rule on SAM's three masks, at the decoder: same image embedding and text token.
  ref, model, _, _, _ = setup
  torch.manual_seed(3)
  embedding, prompt = torch.randn(1, 256, 64, 64), torch.randn(2, 1, 256)
  with torch.no_grad():
    sparse, dense = ref.prompt_encoder(text_embeds=prompt)
    expected = ref._decode(embedding, sparse, dense, multimask_output=True)
  multi = nnx.clone(model)
  multi.cfg = dataclasses.replace(model.cfg, multimask=True)
  low_res, iou = nnx.jit(lambda m, e, p: m.decode(e, p))(multi, jnp.asarray(nhwc(embedding)), jnp.asarray(prompt.numpy()))
  assert low_res.shape == (2, 1, 256, 256) and iou.shape == (2, 1)
  assert_close(low_res, expected, what="multimask low-res logits")


def _masked_mean(x, valid):
  w = valid[..., None].float()
  return (x * w).sum(1) / w.sum(1)


def test_pooling_and_fusion_features_match_torchscale(setup):
  # Every (fusion, pooling) pair against torchscale's joint, image-only and text-only passes.
  # Run eagerly: after the first call the ops are compiled, where each jit would compile anew.
  ref, model, _, _, _ = setup
  rng = np.random.default_rng(1)
  evf = rng.standard_normal((2, 224, 224, 3)).astype(np.float32)
  ids = np.array([[0, 5, 9, 11, 2], [0, 7, 2, 1, 1]])
  mask = (ids != 1).astype(np.int32)
  t_evf, t_ids, t_pad = torch.from_numpy(evf.transpose(0, 3, 1, 2)), torch.from_numpy(ids), torch.from_numpy(mask == 0)
  beit3 = ref.mm_extractor.beit3
  with torch.no_grad():
    joint = beit3(visual_tokens=t_evf, textual_tokens=t_ids, text_padding_position=t_pad)["encoder_out"]
    image = beit3(visual_tokens=t_evf)["encoder_out"]
    text = beit3(textual_tokens=t_ids, text_padding_position=t_pad)["encoder_out"]
  nv = image.shape[1]
  all_image = torch.ones(2, nv, dtype=torch.bool)
  pools = {"vision_cls": lambda x, v, first: x[:, 0], "text_cls": lambda x, v, first: x[:, first],
           "mean": lambda x, v, first: _masked_mean(x, v)}
  other = nnx.clone(model)
  for pooling, pool in pools.items():
    expected = {"early": pool(joint, torch.cat([all_image, ~t_pad], 1), nv),
                "late": torch.cat([pool(image, all_image, 0), pool(text, ~t_pad, 0)], -1),
                "text": pool(text, ~t_pad, 0)}
    for fusion, e in expected.items():
      if fusion == "text" and pooling == "vision_cls":
        continue
      # Features never touch the projector, whose input width is the only difference between fusions.
      other.cfg = dataclasses.replace(model.cfg, fusion=fusion, pooling=pooling)
      feats = other.features(jnp.asarray(evf), jnp.asarray(ids), jnp.asarray(mask))
      assert feats.shape == (2, other.cfg.feature_dim)
      assert_close(feats, e, what=f"{fusion} fusion, {pooling} features")


def test_late_fusion_model_runs_in_bfloat16():
  # Late fusion is the one ablation whose parameters differ (the projector takes 2D features;
  # every fusion and pooling is checked against torchscale above, at the feature level), here with
  # bfloat16 compute over float32 parameters.
  cfg = EvfConfig(sam=sam_config("vit_b", img_size=128, embed_dim=32, depth=1, num_heads=2),
                  beit3=BEiT3Config.base(encoder_embed_dim=32, encoder_attention_heads=2, encoder_ffn_embed_dim=64,
                                         encoder_layers=1, vocab_size=50), fusion="late", pooling="mean")
  rng = np.random.default_rng(0)  # random weights without a (slow, eager) random init
  model = evf_sam.build(cfg, {k: rng.normal(0, 0.1, s).astype(np.float32)
                              for k, s in store.param_shapes(evf_sam.abstract_model(cfg)).items()}, jnp.bfloat16)
  assert model.text_hidden_fcs[0][0].kernel.shape == (64, 32)
  ids = jnp.array([[0, 5, 2, 1], [0, 6, 7, 2]])
  logits = nnx.jit(lambda m, *a: m(*a))(model, jnp.zeros((2, 128, 128, 3)), jnp.ones((2, 224, 224, 3)), ids,
                                        (ids != 1).astype(jnp.int32))
  assert logits.shape == (2, 128, 128) and logits.dtype == jnp.bfloat16
  assert np.isfinite(np.asarray(logits, np.float32)).all()
  assert {v.dtype for v in jax.tree.leaves(nnx.state(model, nnx.Param))} == {jnp.dtype(jnp.float32)}
