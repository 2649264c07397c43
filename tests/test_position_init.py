"""model.pos_embed_init: the SAM ViT's position embedding of an image encoder trained from scratch."""

import numpy as np
import pytest

from jaxris import build
from jaxris.configs import evf_sam_vith, ldit_vitb
from jaxris.models.functional import flat_params


def _mae_2d_sincos(dim, h, w):
  """MAE's get_2d_sincos_pos_embed (facebookresearch/mae util/pos_embed.py), rewritten from its formulas:
  the grid is meshgrid(w, h), the first half of the width encodes grid[0] (columns), the second half
  grid[1] (rows); each half is [sin(pos * omega), cos(pos * omega)] with omega = 1 / 10000^(i / (dim/4))."""
  grid = np.stack(np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64)), axis=0)

  def one_d(d, pos):
    omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
    out = np.einsum("m,d->md", pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)
  return np.concatenate([one_d(dim // 2, grid[0]), one_d(dim // 2, grid[1])], axis=1).reshape(h, w, dim)


@pytest.mark.parametrize("h, w, dim", [(16, 16, 128), (4, 6, 8)])
def test_sincos_table_is_maes(h, w, dim):
  np.testing.assert_allclose(build.sincos_2d(h, w, dim), _mae_2d_sincos(dim, h, w), atol=1e-6)


@pytest.mark.parametrize("recipe, name", [(ldit_vitb, "visual_encoder.pos_embed"),
                                          (evf_sam_vith, "visual_model.image_encoder.pos_embed")])
def test_recipes_start_the_position_embedding_as_asked(recipe, name):
  cfg = recipe.get_config("refshapes")
  cfg.model.sam_overrides.depth = 1
  cfg.init.sam_decoder = ""
  assert cfg.model.pos_embed_init in ("zeros", "sincos")
  for how in ("zeros", "sincos"):
    cfg.model.pos_embed_init = how
    model, mcfg, _ = build.build(cfg.model, cfg.init, seed=0)
    table = np.asarray(flat_params(model)[name])
    grid, width = mcfg.sam.encoder.grid, mcfg.sam.encoder.embed_dim
    expected = np.zeros((1, grid, grid, width)) if how == "zeros" else build.sincos_2d(grid, grid, width)[None]
    np.testing.assert_array_equal(table, expected)


def test_sincos_is_refused_over_a_sam_checkpoint_and_unknown_names():
  cfg = ldit_vitb.get_config("refshapes")
  cfg.model.pos_embed_init = "sincos"
  cfg.init.sam = "weights/sam_vit_b"
  with pytest.raises(ValueError, match="trained from scratch"):
    build.position_init(cfg.model, cfg.init, "visual_encoder.pos_embed", build.sam_for(cfg.model).encoder)
  cfg.model.pos_embed_init = "learned"
  with pytest.raises(ValueError, match="'zeros' or 'sincos'"):
    build.position_init(cfg.model, cfg.init, "visual_encoder.pos_embed", build.sam_for(cfg.model).encoder)
