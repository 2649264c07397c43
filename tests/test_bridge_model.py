"""The whole SAM+CLIP bridge (jaxris BridgeSam) against a PyTorch reference assembled from the official
segment_anything, transformers' CLIP and BERT, and the clean-room bridge modules (tests/bridge_reference_model.py),
at reduced size with random weights: logits, no-target logits and the oracle's sparse prompt; full-size
parameter counts per the spec's table; the recipe's build checks."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import bridge_reference_model as ref_model
from jaxris.models.functional import assign_params
from jaxris.models.ris.bridge.model import BridgeConfig, BridgeSam
from parity import assert_close

fast_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def _inputs(cfg, b=2, t=7, seed=3):
  g = torch.Generator().manual_seed(seed)
  image = torch.randn(b, 3, cfg.sam.encoder.img_size, cfg.sam.encoder.img_size, generator=g)
  ids = torch.randint(1, cfg.bert.vocab_size, (b, t), generator=g)
  mask = torch.ones(b, t, dtype=torch.long)
  mask[1, 4:] = 0
  ids[1, 4:] = 0
  return image, ids, mask


@pytest.fixture(scope="module")
def pair():
  torch.set_num_threads(1)
  cfg = ref_model.small_config()
  r = ref_model.BridgeRef(cfg).eval()
  model = nnx.eval_shape(lambda: BridgeSam(cfg, rngs=nnx.Rngs(0)))
  assign_params(model, ref_model.flax_params(r))  # strict: every parameter and buffer exactly once
  return cfg, r, model


def test_whole_forward_matches_reference(pair):
  cfg, r, model = pair
  image, ids, mask = _inputs(cfg)
  with torch.no_grad():
    logits, nt, _ = r(image, ids, mask)
  graphdef, state = nnx.split(model)
  out = fast_jit(lambda s, *a: nnx.merge(graphdef, s)(*a))(
      state, jnp.asarray(image.permute(0, 2, 3, 1).numpy()), jnp.asarray(ids.numpy(), jnp.int32),
      jnp.asarray(mask.numpy(), jnp.int32))
  assert out["logits"].shape == (2, 128, 128) and out["no_target"].shape == (2, 2)
  assert_close(out["logits"], logits, what="bridge logits")
  assert_close(out["no_target"], nt, what="no-target logits")


def test_oracle_sparse_prompt_matches_reference(pair):
  """gt_category: the query is clip_mlpl(T[category_rows[category]]), "background" for -1."""
  cfg, r, model = pair
  r.cfg = dataclasses.replace(cfg, sparse_query="gt_category")
  image, ids, mask = _inputs(cfg)
  category = torch.tensor([3, -1])
  try:
    with torch.no_grad():
      _, _, sparse = r(image, ids, mask, category)
  finally:
    r.cfg = cfg
  oracle = nnx.eval_shape(lambda: BridgeSam(dataclasses.replace(cfg, sparse_query="gt_category"), rngs=nnx.Rngs(0)))
  nnx.update(oracle, nnx.state(model))  # the same weights
  assert oracle.BATCH_INPUTS[-1] == "category"
  lang = oracle.encode_text(jnp.asarray(ids.numpy(), jnp.int32), jnp.asarray(mask.numpy(), jnp.int32))
  ours = oracle.sparse_prompt(lang, jnp.asarray(category.numpy(), jnp.int32))
  assert_close(ours, sparse, what="oracle sparse prompt")
  with pytest.raises(ValueError, match="oracle"):
    oracle.sparse_prompt(lang, None)


def _count(module) -> int:
  return sum(int(np.prod(v.shape)) for _, v in nnx.to_flat_state(nnx.state(module, nnx.Param)))


def test_full_size_parameter_counts():
  """Spec §7's table, on the full-size bridge (SAM/CLIP/BERT depth cut to 1: their sizes are not the bridge's)."""
  full = BridgeConfig()
  cfg = dataclasses.replace(full, sam=dataclasses.replace(full.sam, encoder=dataclasses.replace(
      full.sam.encoder, depth=1, global_attn_indexes=())), clip=dataclasses.replace(full.clip, num_hidden_layers=1),
      no_target_head=True)
  model = nnx.eval_shape(lambda: BridgeSam(cfg, rngs=nnx.Rngs(0)))
  names = ("adaptor_clip", "backbone_clip", "backbone_sam", "pixel_decoder", "dfam", "txt2txt", "lang_mlp", "clip_mlpl")
  counts = {name: _count(getattr(model, name)) for name in names}
  assert counts == {"adaptor_clip": 787_968, "backbone_clip": 16_557_184, "backbone_sam": 1_969_152,
                    "pixel_decoder": 7_414_208, "dfam": 6_899_970 + 66_306, "txt2txt": 789_760,
                    "lang_mlp": 196_864, "clip_mlpl": 196_864}
  trained_bert = sum(_count(model.bert.encoder.layer[i]) for i in range(10))
  assert trained_bert == 70_878_720
  assert model.class_text.shape == (134, 768) and model.sot_vec.shape == (768,)
  assert cfg.clip_grid == 24 and cfg.sam.encoder.grid == 64


def test_config_checks_and_round_trip():
  cfg = ref_model.small_config(sparse_query="gt_category")
  assert BridgeConfig.from_dict(cfg.to_dict()) == cfg and cfg.oracle
  with pytest.raises(ValueError, match="sparse_query"):
    ref_model.small_config(sparse_query="clip_cls")


def test_clip_text_constants_tool(tmp_path):
  """python -m jaxris.weights.bridge on a tiny random CLIP: T (COCO panoptic + background, synonyms averaged
  before normalising), the start-of-text vector, COCO id -> row; the build reads the directory back."""
  from jaxris.models.clip import CLIPConfig, CLIPModel, CLIPTextConfig
  from jaxris.models.functional import flat_params
  from jaxris.text.clip_tokenizer import CLIPTokenizer
  from jaxris.weights import bridge as bridge_weights
  from jaxris.weights import clip as clip_weights
  from jaxris.weights import fetch, store
  import shutil

  vocab = fetch.fetch_checkpoint("clip_vocab")
  config = CLIPConfig(vision=_small_vision(), text=CLIPTextConfig(hidden_size=32, intermediate_size=64,
                                                                           num_hidden_layers=1, num_attention_heads=2),
                      projection_dim=24)
  clip = CLIPModel(config, rngs=nnx.Rngs(0))
  src = tmp_path / "clip"
  store.save(str(src), clip_weights.FAMILY, config.to_dict(), {k: np.asarray(v) for k, v in flat_params(clip).items()})
  shutil.copy(vocab, src)
  assert bridge_weights.main(["--clip", str(src), "--out", str(tmp_path / "constants")]) == 0
  c = bridge_weights.load_constants(str(tmp_path / "constants"))
  assert c["class_text"].shape == (134, 24) and c["sot_vec"].shape == (32,)
  np.testing.assert_allclose(np.linalg.norm(c["class_text"], axis=-1), 1.0, rtol=1e-5)
  rows = c["category_rows"]
  assert rows[1] == 0 and rows[90] == 79 and rows[200] == 132 and rows[12] == 133 and rows[0] == 133
  tok = CLIPTokenizer.from_file(vocab)
  feats = lambda texts: np.asarray(clip.get_text_features(*(tok(texts)[k] for k in ("input_ids", "attention_mask"))))
  tree = feats(["branch", "tree", "bush", "leaves"]).mean(0)
  row = [n for _, n in bridge_weights.COCO_PANOPTIC].index("tree-merged")
  np.testing.assert_allclose(c["class_text"][row], tree / np.linalg.norm(tree), atol=1e-5)
  np.testing.assert_allclose(c["class_text"][0], feats(["person"])[0] / np.linalg.norm(feats(["person"])[0]), atol=1e-5)
  sky = [n for _, n in bridge_weights.COCO_PANOPTIC].index("sky-other-merged")
  np.testing.assert_allclose(c["class_text"][sky], feats(["sky"])[0] / np.linalg.norm(feats(["sky"])[0]), atol=1e-5)
  other = np.asarray(clip.text_model(*(tok(["a different caption"])[k] for k in ("input_ids", "attention_mask")))
                     .last_hidden_state[0, 0])
  np.testing.assert_allclose(c["sot_vec"], other, atol=1e-5)  # causal: the same for every caption
  assert bridge_weights.main(["--clip", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 2


def _small_vision():
  from jaxris.models.clip import CLIPVisionConfig
  return CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                          image_size=32, patch_size=16)
