"""Prompt encoder and mask decoder parity against segment_anything (random weights)."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from parity import assert_close
from sam_fixtures import convert, nchw, nhwc, official_sam


@pytest.fixture(scope="module")
def models():
  official = official_sam(embed_dim=96, depth=2, num_heads=4, global_attn_indexes=(1,), seed=7)
  return official, convert(official)


def _prompts(rng):
  coords = torch.tensor(rng.uniform(0, 1024, (2, 3, 2)), dtype=torch.float32)
  labels = torch.tensor([[1, 0, -1], [0, 1, 1]], dtype=torch.int64)
  boxes = torch.tensor([[10.0, 20.0, 500.0, 800.0], [300.0, 5.0, 1000.0, 600.0]])
  masks = torch.randn(2, 1, 256, 256, generator=torch.Generator().manual_seed(3))
  return coords, labels, boxes, masks


@pytest.mark.parametrize("use_points,use_boxes,use_masks", [
    (True, False, False), (False, True, False), (True, True, False), (False, False, True), (True, True, True),
    (False, False, False)])
def test_prompt_encoder(models, use_points, use_boxes, use_masks):
  official, ours = models
  coords, labels, boxes, masks = _prompts(np.random.default_rng(0))
  args = dict(points=(coords, labels) if use_points else None, boxes=boxes if use_boxes else None,
              masks=masks if use_masks else None)
  with torch.no_grad():
    ref_sparse, ref_dense = official.prompt_encoder(**args)
  jargs = dict(points=(jnp.asarray(coords.numpy()), jnp.asarray(labels.numpy())) if use_points else None,
               boxes=jnp.asarray(boxes.numpy()) if use_boxes else None,
               masks=jnp.asarray(nhwc(masks)) if use_masks else None)
  sparse, dense = ours.prompt_encoder(**jargs)
  assert_close(sparse, ref_sparse, what="sparse embeddings")
  assert_close(nchw(dense), ref_dense, what="dense embeddings")


def test_dense_positional_encoding(models):
  official, ours = models
  with torch.no_grad():
    ref = official.prompt_encoder.get_dense_pe()
  assert_close(nchw(ours.prompt_encoder.get_dense_pe()), ref, what="dense PE")


@pytest.mark.parametrize("multimask", [False, True])
def test_mask_decoder(models, multimask):
  official, ours = models
  g = torch.Generator().manual_seed(11)
  image_embeddings = torch.randn(1, 256, 64, 64, generator=g)
  sparse = torch.randn(3, 4, 256, generator=g)  # three prompt sets for one image
  dense = torch.randn(3, 256, 64, 64, generator=g)
  with torch.no_grad():
    ref_masks, ref_iou = official.mask_decoder(image_embeddings, official.prompt_encoder.get_dense_pe(), sparse,
                                               dense, multimask)
  masks, iou = ours.mask_decoder(jnp.asarray(nhwc(image_embeddings)), ours.prompt_encoder.get_dense_pe(),
                                 jnp.asarray(sparse.numpy()), jnp.asarray(nhwc(dense)), multimask)
  assert masks.shape == (3, 3 if multimask else 1, 256, 256)
  assert_close(masks, ref_masks, what="masks")
  assert_close(iou, ref_iou, what="iou predictions")
