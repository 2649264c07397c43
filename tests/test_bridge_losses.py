"""The bridge's losses (jaxris.bridge_losses) against the PyTorch reference of the official criterion
(tests/bridge_reference_dfam.py): main SAM loss, Hungarian matching, importance sampling, the DFAM
set terms, the no-target CE and the total, with the random points injected into both sides.

Small sizes: 3 samples with 2, 1 and 0 GT instances (the last is a gRefCOCO no-target sample),
8 queries, 16² mask predictions against 32² GT masks, 64 points.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment as scipy_lsa

import bridge_reference_dfam as ref_lib
from jaxris import bridge_losses as L
from parity import assert_close

B, Q, K, H_PRED, H_GT, C_TEXT, P = 3, 8, 2, 16, 32, 5, 64
COUNTS = (2, 1, 0)  # GT instances per sample
W = L.LossWeights(num_points=P)
# XLA's backend optimisation costs more than it saves on programs this small and run once.
fast_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def _blob(rng, h):
  y, x = np.mgrid[:h, :h]
  cy, cx, r = rng.uniform(4, h - 4, 2).tolist() + [rng.uniform(3, h / 3)]
  return ((y - cy) ** 2 + (x - cx) ** 2 < r * r).astype(np.float32)


@pytest.fixture(scope="module")
def data():
  torch.set_num_threads(1)
  rng = np.random.default_rng(0)
  inst = np.zeros((B, K, H_GT, H_GT), np.float32)
  valid = np.zeros((B, K), bool)
  for b, n in enumerate(COUNTS):
    for k in range(n):
      inst[b, k], valid[b, k] = _blob(rng, H_GT), True
  merged = inst.max(axis=1)
  empty = ~valid.any(1)

  def pred_set():
    return {"pred_masks": rng.normal(0, 3, (B, Q, H_PRED, H_PRED)).astype(np.float32),
            "pred_logits": rng.normal(0, 2, (B, Q, B + C_TEXT)).astype(np.float32),
            "pred_logits_bertcls": rng.normal(0, 2, (B, Q, B)).astype(np.float32)}

  sets = [pred_set() for _ in range(4)]
  outputs = {**sets[0], "aux_outputs": sets[1:], "nt_label": rng.normal(size=(B, 2)).astype(np.float32),
             "sam_logits": rng.normal(0, 3, (B, H_GT, H_GT)).astype(np.float32)}
  targets = {"mask": merged, "instance_masks": inst, "instance_valid": valid, "empty": empty}
  match_coords = [rng.random((B, P, 2)).astype(np.float32) for _ in range(4)]
  loss_coords = [rng.random((B, K, P, 2)).astype(np.float32) for _ in range(4)]
  labels = np.array([7, 7, -1])  # samples 0 and 1 share a category; 2 has none
  ref_targets = [{"masks": torch.from_numpy(inst[b, :n]), "empty": bool(empty[b])} for b, n in enumerate(COUNTS)]
  return outputs, targets, match_coords, loss_coords, labels, ref_targets


def _torch_outputs(outputs):
  t = lambda d: {k: torch.from_numpy(v) for k, v in d.items() if k != "aux_outputs"}
  return {**t(outputs), "aux_outputs": [t(a) for a in outputs["aux_outputs"]]}


def _jnp(tree):
  return jax.tree.map(jnp.asarray, tree)


def test_sam_mask_loss(data):
  outputs, targets, *_ = data
  loss = fast_jit(L.sam_mask_loss)
  got = loss(jnp.asarray(outputs["sam_logits"]), jnp.asarray(targets["mask"]), jnp.asarray(targets["empty"]))
  want = ref_lib.sam_mask_loss(torch.from_numpy(outputs["sam_logits"]), torch.from_numpy(targets["mask"]),
                               list(targets["empty"]))
  for g, w in zip(got, want):
    assert_close(g, w, what="main loss")
  # the empty sample adds nothing but counts in the mean
  alone = loss(jnp.asarray(outputs["sam_logits"][:2]), jnp.asarray(targets["mask"][:2]), jnp.zeros(2, bool))
  assert_close(got[0] * 3 / 2, alone[0], what="denominator")


def test_lsap_equals_scipy_inside_jit():
  rng = np.random.default_rng(1)
  solve = fast_jit(jax.vmap(L.linear_sum_assignment))
  for r, c in ((4, 4), (6, 100)):
    cost = rng.normal(size=(8, r, c)).astype(np.float32)
    valid = rng.random((8, r)) < 0.7
    got = np.asarray(solve(cost, valid))
    for b in range(8):
      rows = np.flatnonzero(valid[b])
      want = np.full(r, -1)
      if rows.size:
        i, j = scipy_lsa(cost[b][rows])
        want[rows[i]] = j
      np.testing.assert_array_equal(got[b], want)
      if rows.size:  # and the optimum's value
        assert np.isclose(cost[b][rows, got[b][rows]].sum(), cost[b][rows][i, j].sum())
  # non-finite costs (a NaN loss) still terminate with an assignment of distinct columns
  bad = rng.normal(size=(8, 4, 4)).astype(np.float32)
  bad[0, 1, 2], bad[1] = np.nan, np.nan
  bad[2, :, 0] = np.inf
  got = np.asarray(solve(bad, np.ones((8, 4), bool)))
  assert all(len(set(row)) == 4 and row.min() >= 0 for row in got)


def test_matching_equals_reference(data):
  """Costs on the injected points, then the JAX solver and scipy (pure_callback), both inside jit."""
  outputs, targets, match_coords, _, _, ref_targets = data
  sets = [outputs] + outputs["aux_outputs"]
  tsets = [_torch_outputs(outputs)] + _torch_outputs(outputs)["aux_outputs"]

  @fast_jit
  def both(pred, masks, valid, coords):
    cost = L.matching_cost(pred, masks, coords, W)
    return cost, L.hungarian_match(cost, valid, "jax"), L.hungarian_match(cost, valid, "scipy")

  for s, ts, coords in zip(sets, tsets, match_coords):
    pred = {k: jnp.asarray(s[k]) for k in ("pred_masks", "pred_logits", "pred_logits_bertcls")}
    cost, m_jax, m_scipy = both(pred, jnp.asarray(targets["instance_masks"]), jnp.asarray(targets["instance_valid"]),
                                jnp.asarray(coords))
    want = ref_lib.indices_to_slots(ref_lib.match(ts, ref_targets, torch.from_numpy(coords)), K)
    np.testing.assert_array_equal(np.asarray(m_jax), want)
    np.testing.assert_array_equal(np.asarray(m_scipy), want)


def test_importance_points_equal_reference():
  rng = np.random.default_rng(2)
  logits = rng.normal(0, 3, (5, H_PRED, H_PRED)).astype(np.float32)
  cand = rng.random((5, 3 * P, 2)).astype(np.float32)
  extra = rng.random((5, P // 4, 2)).astype(np.float32)
  got = np.asarray(fast_jit(L.uncertain_points, static_argnums=3)(logits, cand, extra, 3 * P // 4))
  want = ref_lib.uncertain_points(torch.from_numpy(logits)[:, None], torch.from_numpy(cand),
                                  torch.from_numpy(extra), 3 * P // 4).numpy()
  np.testing.assert_array_equal(np.sort(got, axis=1), np.sort(want, axis=1))
  # from a key: shapes, range, and three quarters of the points where |logit| is smallest
  pts = fast_jit(L.importance_points, static_argnums=(2, 3, 4))(jax.random.key(0), jnp.asarray(logits), P, 3.0, 0.75)
  assert pts.shape == (5, P, 2) and bool(((pts >= 0) & (pts <= 1)).all())


@pytest.mark.parametrize("weight_mask", [False, True])
def test_set_terms_equal_reference(data, weight_mask):
  outputs, targets, _, loss_coords, labels, ref_targets = data
  match = np.array([[5, 2], [0, -1], [-1, -1]], np.int32)  # injected
  indices = [(torch.tensor([5, 2]), torch.tensor([0, 1])), (torch.tensor([0]), torch.tensor([0])),
             (torch.tensor([], dtype=torch.int64), torch.tensor([], dtype=torch.int64))]
  pred = {k: jnp.asarray(outputs[k]) for k in ("pred_masks", "pred_logits", "pred_logits_bertcls")}
  tg = _jnp({k: targets[k] for k in ("instance_masks", "instance_valid")})
  w = W
  if weight_mask:
    tg["same_category"] = L.same_category(jnp.asarray(labels))
    w = L.LossWeights(num_points=P, same_category_mask=True)
  terms = fast_jit(lambda pred, tg, w, m, lc: L.set_loss(pred, tg, jax.random.key(0), w, match=m, loss_coords=lc)[0],
                   static_argnums=2)
  got = terms(pred, tg, w, jnp.asarray(match), jnp.asarray(loss_coords[0]))
  want = ref_lib.set_losses(_torch_outputs(outputs), ref_targets, indices, torch.from_numpy(loss_coords[0]),
                            num_masks=3, labels=labels if weight_mask else None)
  assert set(got) == set(want)
  for k in want:
    assert_close(got[k], want[k], what=k)
  if weight_mask:  # the mask changes the BERT term
    plain = terms(pred, tg, W, jnp.asarray(match), jnp.asarray(loss_coords[0]))
    assert abs(float(plain["loss_ce_bertcls"]) - float(got["loss_ce_bertcls"])) > 1e-6


def test_no_target_loss(data):
  outputs, targets, *_ = data
  got = L.no_target_loss(jnp.asarray(outputs["nt_label"]), jnp.asarray(targets["empty"]))
  want = ref_lib.no_target_loss(torch.from_numpy(outputs["nt_label"]), targets["empty"])
  assert_close(got, want, what="nt")


def test_total_equals_reference_and_gradients(data):
  """Every term and the total, matchings found by both sides on the same injected points;
  gradients finite, and none reaches the no-target sample's mask predictions."""
  outputs, targets, match_coords, loss_coords, _, ref_targets = data

  @fast_jit
  def run(o, t, mc, lc):
    f = lambda o: L.bridge_loss(o, t, jax.random.key(0), W, match_coords=mc, loss_coords=lc)
    return jax.value_and_grad(f, has_aux=True)(o)

  (total, terms), grads = run(_jnp(outputs), _jnp(targets), _jnp(match_coords), _jnp(loss_coords))
  want_total, want_terms, _ = ref_lib.total_loss(
      _torch_outputs(outputs), torch.from_numpy(outputs["sam_logits"]), torch.from_numpy(targets["mask"]), ref_targets,
      [torch.from_numpy(c) for c in match_coords], [torch.from_numpy(c) for c in loss_coords])
  assert set(terms) == set(want_terms) and len(terms) == 2 + 4 * 4 + 1
  for k in want_terms:
    assert_close(terms[k], want_terms[k], what=k)
  assert_close(total, want_total, what="total")
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
  assert float(jnp.abs(grads["pred_masks"]).max()) > 0 and float(jnp.abs(grads["sam_logits"]).max()) > 0
  assert float(jnp.abs(grads["pred_masks"][2]).max()) == 0  # the no-target sample has no matched mask
  assert float(jnp.abs(grads["sam_logits"][2]).max()) == 0   # nor a main-loss term


def test_scipy_matcher_gives_the_jax_matchers_total(data):
  """The scipy matcher (a host callback) under the loss's vmap over the prediction sets finds the
  same matchings as the JAX solver: every term equal."""
  outputs, targets, match_coords, loss_coords, *_ = data
  run = fast_jit(lambda o, t, mc, lc, w: L.bridge_loss(o, t, jax.random.key(0), w, match_coords=mc, loss_coords=lc),
                 static_argnums=4)
  args = _jnp(outputs), _jnp(targets), _jnp(match_coords), _jnp(loss_coords)
  _, with_jax = run(*args, W)
  _, with_scipy = run(*args, dataclasses.replace(W, matcher="scipy"))
  for k in with_jax:
    np.testing.assert_allclose(float(with_scipy[k]), float(with_jax[k]), rtol=1e-6, err_msg=k)


def test_random_points_and_all_empty(data):
  """The key path (random matching and importance-sampled points, JAX matcher; one prediction set
  to keep it small) is deterministic per key, and a batch with no target at all gives finite
  losses with zero mask terms."""
  outputs, targets, *_ = data
  o = _jnp({k: v for k, v in outputs.items() if k != "aux_outputs"})
  t = _jnp(targets)
  run = fast_jit(lambda o, t, key: L.bridge_loss(o, t, key, W))
  total, terms = run(o, t, jax.random.key(1))
  total2, _ = run(o, t, jax.random.key(1))
  total3, _ = run(o, t, jax.random.key(2))
  assert float(total) == float(total2) != float(total3) and np.isfinite(float(total))
  assert set(terms) == {"main_mask_bce_loss", "main_mask_dice_loss", "loss_mask", "loss_dice", "loss_ce",
                        "loss_ce_bertcls", "nt_loss"}
  none = {**t, "instance_valid": jnp.zeros((B, K), bool), "empty": jnp.ones(B, bool)}
  total, terms = run(o, none, jax.random.key(2))
  assert all(np.isfinite(float(v)) for v in terms.values())
  for k in ("main_mask_bce_loss", "main_mask_dice_loss", "loss_mask", "loss_dice"):
    assert float(terms[k]) == 0.0, k
