"""DFAM parity: jaxris Dfam against the PyTorch reference built from the spec (tests/bridge_reference_dfam.py),
random weights copied across by name, reduced sizes (width 64, 4 heads, 12 queries, grids 3..16).

The attention masks are given to both sides (random, with some rows blocked everywhere) so the
comparison does not hinge on logits that round to either side of sigmoid = 0.5; the mask
derivation itself is compared separately on logits kept away from 0.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx

import bridge_reference_dfam as ref_lib
from jaxris.models.functional import assign_params
from jaxris.models.ris.bridge.dfam import Dfam, attention_mask
from parity import assert_close

# XLA's backend optimisation costs more than it saves on programs this small and run once.
fast_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})

SMALL = dict(hidden=64, queries=12, heads=4, ffn=128, layers=3, clip_dim=48, bert_dim=32)
CLIP_SIZES, SAM_SIZES, E_SIZE, B, K_TEXT = (3, 6, 12), (4, 8, 16), 16, 2, 5


def flax_params(state_dict) -> dict:
  """Official state_dict names -> jaxris dotted names: in_proj split into q/k/v, Linear weights
  transposed to kernels, LayerNorm weight -> scale; embeddings and logit scales as they are."""
  out = {}
  for name, t in state_dict.items():
    t = t.detach().numpy()
    prefix, leaf = name.rsplit(".", 1) if "." in name else ("", name)
    if leaf.startswith("in_proj_"):
      kind = "kernel" if leaf == "in_proj_weight" else "bias"
      for proj, w in zip(("q_proj", "k_proj", "v_proj"), np.split(t, 3)):
        out[f"{prefix}.{proj}.{kind}"] = w.T if kind == "kernel" else w
    elif "norm" in prefix.rsplit(".", 1)[-1]:
      out[f"{prefix}.{'scale' if leaf == 'weight' else 'bias'}"] = t
    elif leaf == "weight" and not prefix.endswith(("query_feat", "query_embed", "level_embed")):
      out[f"{prefix}.kernel"] = t.T
    else:
      out[name] = t
  return out


@pytest.fixture(scope="module")
def setup():
  torch.manual_seed(0)
  torch.set_num_threads(1)
  ref = ref_lib.DfamRef(**SMALL, no_target_head=True).eval()
  with torch.no_grad():  # non-trivial biases, norms and logit scales
    for name, p in ref.named_parameters():
      if p.dim() == 1 or name.startswith("logit"):
        p.add_(0.1 * torch.randn_like(p))
  model = nnx.eval_shape(lambda: Dfam(SMALL["hidden"], SMALL["queries"], SMALL["heads"], SMALL["ffn"], SMALL["layers"],
                                      clip_text_dim=SMALL["clip_dim"], bert_dim=SMALL["bert_dim"],
                                      no_target_head=True, rngs=nnx.Rngs(0)))
  assign_params(model, flax_params(ref.state_dict()))  # strict: every parameter, exactly once
  assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(nnx.state(model)))
  g = torch.Generator().manual_seed(1)
  c = SMALL["hidden"]
  inputs = dict(
      clip_feats=[torch.randn(B, c, s, s, generator=g) for s in CLIP_SIZES],
      sam_feats=[torch.randn(B, c, s, s, generator=g) for s in SAM_SIZES],
      e=torch.randn(B, c, E_SIZE, E_SIZE, generator=g) * 0.2,
      bert_cls=torch.randn(B, SMALL["bert_dim"], generator=g),
      sot=torch.randn(SMALL["clip_dim"], generator=g),
      class_text=torch.randn(K_TEXT, SMALL["clip_dim"], generator=g))
  masks = []
  for s_sam, s_clip in zip(SAM_SIZES, CLIP_SIZES):
    pair = []
    for s in (s_sam, s_clip):
      m = torch.rand(B, SMALL["queries"], s * s, generator=g) < 0.6
      m[:, :2] = True  # rows blocked everywhere: both sides must unblock them
      pair.append(m)
    masks.append(tuple(pair))
  return ref, model, inputs, masks


def _jax_inputs(inputs):
  nhwc = lambda t: jnp.asarray(t.permute(0, 2, 3, 1).numpy())
  return dict(clip_feats=[nhwc(t) for t in inputs["clip_feats"]], sam_feats=[nhwc(t) for t in inputs["sam_feats"]],
              sam_embed=nhwc(inputs["e"]), bert_cls=jnp.asarray(inputs["bert_cls"].numpy()),
              sot_vec=jnp.asarray(inputs["sot"].numpy()), class_text=jnp.asarray(inputs["class_text"].numpy()))


def _run(model, kw, attn_masks):
  graphdef, state = nnx.split(model)
  return fast_jit(lambda state, kw, am: nnx.merge(graphdef, state)(**kw, attn_masks=am))(state, kw, attn_masks)


def test_dfam_parity_fixed_masks(setup):
  ref, model, inputs, masks = setup
  with torch.no_grad():
    expected = ref(inputs["clip_feats"], inputs["sam_feats"], inputs["e"], inputs["bert_cls"], inputs["sot"],
                   inputs["class_text"], attn_masks=masks)
  jmasks = [tuple(jnp.asarray(m.numpy()) for m in pair) for pair in masks]
  out = _run(model, _jax_inputs(inputs), jmasks)
  b, q = B, SMALL["queries"]
  assert out["pred_masks"].shape == (b, q, E_SIZE, E_SIZE)
  assert out["pred_logits"].shape == (b, q, b + K_TEXT) and out["pred_logits_bertcls"].shape == (b, q, b)
  assert out["nt_label"].shape == (b, 2) and len(out["aux_outputs"]) == 3
  errs = []
  for got, want in zip([out] + out["aux_outputs"], [expected] + expected["aux_outputs"]):
    for key in ("pred_masks", "pred_logits", "pred_logits_bertcls"):
      errs.append(assert_close(got[key], want[key], what=key))
  errs.append(assert_close(out["obj_emb"], expected["obj_emb"], what="obj_emb"))
  errs.append(assert_close(out["nt_label"], expected["nt_label"], what="nt_label"))
  for (s, c), (rs, rc) in zip(out["attn_masks"], masks):  # fully blocked rows were unblocked
    assert not bool(s[:, :2].any()) and not bool(c[:, :2].any())
    np.testing.assert_array_equal(np.asarray(s[:, 2:]), rs[:, 2:].numpy())
  print(f"DFAM parity, max error / scale: {max(errs):.2e}")


def test_attention_mask_matches_torch():
  g = torch.Generator().manual_seed(3)
  logits = torch.randn(2, 5, 16, 16, generator=g)
  logits = logits + torch.sign(logits) * 0.5  # keep the resized values away from sigmoid = 0.5
  for size in ((4, 4), (8, 8), (3, 3), (12, 12)):
    want = (F.interpolate(logits, size=size, mode="bilinear", align_corners=False).sigmoid().flatten(2) < 0.5).numpy()
    got = np.asarray(attention_mask(jnp.asarray(logits.numpy()), size))
    np.testing.assert_array_equal(got, want)


def test_dfam_derived_masks_close(setup):
  """Without given masks both sides derive their own; with these inputs no logit sits near 0.5
  after resizing, so the outputs agree too (a flip would show as a large error)."""
  ref, model, inputs, _ = setup
  with torch.no_grad():
    expected = ref(inputs["clip_feats"], inputs["sam_feats"], inputs["e"], inputs["bert_cls"], inputs["sot"],
                   inputs["class_text"])
  out = _run(model, _jax_inputs(inputs), None)
  assert_close(out["pred_masks"], expected["pred_masks"], what="pred_masks")
  assert_close(out["pred_logits"], expected["pred_logits"], what="pred_logits")


def test_gradients_flow_and_streams_separate(setup):
  """Gradients are finite; y never flows back into x: the masks ignore the CLIP stream's weights
  (CA_layers2 ...), while the last layer's CLIP-stream weights reach the CLIP logits."""
  _, model, inputs, masks = setup
  kw = _jax_inputs(inputs)
  jmasks = [tuple(jnp.asarray(m.numpy()) for m in pair) for pair in masks]
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  @fast_jit
  def grads(params):
    def f(params):
      out = nnx.merge(graphdef, params, rest)(**kw, attn_masks=jmasks)
      return out["pred_masks"].sum(), out["pred_logits"].sum() + out["pred_logits_bertcls"].sum() + out["nt_label"].sum()
    _, vjp = jax.vjp(f, params)
    one, zero = jnp.ones(()), jnp.zeros(())
    return vjp((one, zero))[0], vjp((zero, one))[0]

  g_mask, g_sem = grads(params)
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves((g_mask, g_sem)))
  for name in ("CA_layers2", "SA_layers2", "transformer_ffn_layers2", "to_logits", "logit_scale_condsim"):
    assert all(float(jnp.abs(x).max()) == 0 for x in jax.tree.leaves(g_mask[name])), name
  last = g_sem["CA_layers2"][SMALL["layers"] - 1]["multihead_attn"]["q_proj"]["kernel"][...]
  assert float(jnp.abs(last).max()) > 0


def test_full_size_parameter_counts():
  count = lambda m: sum(x.size for x in jax.tree.leaves(nnx.state(m, nnx.Param)))
  assert count(nnx.eval_shape(lambda: Dfam(rngs=nnx.Rngs(0)))) == 6_899_970
  assert count(nnx.eval_shape(lambda: Dfam(no_target_head=True, rngs=nnx.Rngs(0)))) == 6_899_970 + 66_306
  assert sum(p.numel() for p in ref_lib.DfamRef().parameters()) == 6_899_970
