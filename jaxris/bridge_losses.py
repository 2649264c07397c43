"""The SAM+CLIP bridge's training losses (spec §5), as plain functions over arrays.

The bridge trains with three groups of terms, all summed into one total:

  main      the SAM mask logits at 1024² against the merged GT mask: weighted BCE + LISA-style
            Dice (weights 2.0 / 0.5 as the official code; the supplementary says the reverse).
            No-target samples contribute 0 but count in the batch mean.
  DFAM      Mask2Former's set loss on DFAM's final prediction and its three auxiliary ones, each
            with its own Hungarian matching per sample: point-sampled mask BCE + Dice (importance
            sampling), a weighted cross-entropy of the CLIP-stream logits whose target for a
            matched query of sample b is column b (the start-of-text vector) and "background"
            (weight 0.1) otherwise, and a BCE of the BERT-[CLS] logits over (B, Q, B).
  no-target gRefCOCO's 0.1 x CE(nt_label, empty) with class weights [0.9, 1.1].

GT instances come padded: ``instance_masks`` [B, K, H, W] with ``instance_valid`` [B, K], so a
sample may have 0..K instances. A matching is stored per GT slot as the index of its query
([B, K] int32, -1 for padding). The assignment is solved in JAX (`linear_sum_assignment`, the
shortest-augmenting-path algorithm scipy uses, in lax loops, so it jits, vmaps and shards like
the rest of the step); ``matcher="scipy"`` calls scipy itself through ``jax.pure_callback``.

Randomness (the matching points and the importance-sampled loss points) comes from a PRNG key;
tests inject the points and the matchings instead.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxris.ops.grid_sample import point_sample

__all__ = ["LossWeights", "sam_mask_loss", "lisa_dice", "matching_cost", "linear_sum_assignment",
           "hungarian_match", "uncertain_points", "importance_points", "mask_losses", "clip_ce_loss",
           "bert_cls_loss", "same_category", "no_target_loss", "set_loss", "bridge_loss"]


@dataclasses.dataclass(frozen=True)
class LossWeights:
  """Weights and sampling constants of the bridge loss; the defaults are the official code's."""
  bce: float = 2.0                    # main SAM loss, BCE_LOSS_WEIGHT
  dice: float = 0.5                   # main SAM loss, DICE_LOSS_WEIGHT
  dfam: float = 1.0                   # MATCHER_WEIGHT: scales every DFAM term
  mask: float = 5.0                   # DFAM point BCE (and its matching cost)
  mask_dice: float = 5.0              # DFAM point Dice (and its matching cost)
  clip_ce: float = 2.0                # CLIP-stream CE (and -softmax[:, b] in the matching cost)
  bert_cls: float = 1.0               # BERT-[CLS] BCE (and -sigmoid[:, b] in the matching cost)
  no_object: float = 0.1              # weight of the "background" column in the CLIP CE
  no_target: float = 0.1              # gRefCOCO no-target CE
  no_target_class_weights: tuple[float, float] = (0.9, 1.1)
  num_points: int = 12544
  oversample_ratio: float = 3.0
  importance_sample_ratio: float = 0.75
  same_category_mask: bool = False    # refcoco.yaml's CRASSIFICATION_WEIGHT_MASK
  matcher: str = "jax"                # "jax" | "scipy" (pure_callback)


# ------------------------------------------------------------------------------------------
# Main SAM loss.


def lisa_dice(logits, target, scale: float = 1000.0, eps: float = 1e-6):
  """Per-sample LISA Dice [B]: 1 - (2 sum(p/s * t) + eps) / (sum(p/s) + sum(t/s) + eps)."""
  p = jax.nn.sigmoid(logits).reshape(logits.shape[0], -1)
  t = target.reshape(target.shape[0], -1).astype(p.dtype)
  return 1 - (2 * (p / scale * t).sum(-1) + eps) / ((p / scale).sum(-1) + (t / scale).sum(-1) + eps)


def _bce_with_logits(x, t):
  """Elementwise BCE with logits, torch's stable form max(x, 0) - x t + log(1 + exp(-|x|))."""
  return jnp.maximum(x, 0) - x * t + jnp.log1p(jnp.exp(-jnp.abs(x)))


def sam_mask_loss(logits, target, empty, bce_weight: float = 2.0, dice_weight: float = 0.5):
  """Main loss: logits/target [B, H, W], empty [B] bool -> (weighted BCE, weighted Dice), each the
  sum over non-empty samples divided by B (empty samples count in the denominator)."""
  keep = 1.0 - empty.astype(jnp.float32)
  bce = _bce_with_logits(logits, target.astype(logits.dtype)).reshape(logits.shape[0], -1).mean(-1)
  b = logits.shape[0]
  return bce_weight * (bce * keep).sum() / b, dice_weight * (lisa_dice(logits, target) * keep).sum() / b


# ------------------------------------------------------------------------------------------
# Point sampling.


def _sample(masks, coords):
  """masks [B, M, H, W] at coords [B, P, 2] (x, y in [0, 1]) -> [B, M, P]."""
  return jax.vmap(lambda m: point_sample(m[..., None], coords)[..., 0], in_axes=1, out_axes=1)(masks)


def _sample_each(masks, coords):
  """masks [N, H, W] each at its own coords [N, P, 2] -> [N, P]."""
  return point_sample(masks[..., None], coords)[..., 0]


def uncertain_points(logits, candidates, extra, num_uncertain: int):
  """detectron2's get_uncertain_point_coords_with_randomness with its random draws given:
  logits [N, H, W], candidates [N, P_over, 2], extra [N, P_rand, 2] -> [N, num_uncertain + P_rand, 2]:
  the `num_uncertain` candidates of highest uncertainty -|logit|, then the extra uniform points."""
  uncertainty = -jnp.abs(_sample_each(logits, candidates))
  _, idx = jax.lax.top_k(uncertainty, num_uncertain)
  picked = jnp.take_along_axis(candidates, idx[..., None], axis=1)
  return jax.lax.stop_gradient(jnp.concatenate([picked, extra], axis=1))


def importance_points(key, logits, num_points: int = 12544, oversample_ratio: float = 3.0,
                      importance_sample_ratio: float = 0.75):
  """Mask2Former's loss points for each mask logits [N, H, W] -> coords [N, num_points, 2]."""
  n = logits.shape[0]
  num_sampled = int(num_points * oversample_ratio)
  num_uncertain = int(importance_sample_ratio * num_points)
  k1, k2 = jax.random.split(key)
  candidates = jax.random.uniform(k1, (n, num_sampled, 2), logits.dtype)
  extra = jax.random.uniform(k2, (n, num_points - num_uncertain, 2), logits.dtype)
  return uncertain_points(jax.lax.stop_gradient(logits), candidates, extra, num_uncertain)


# ------------------------------------------------------------------------------------------
# Matching.


def matching_cost(pred, instance_masks, coords, weights: LossWeights = LossWeights()):
  """Hungarian cost [B, Q, K] of one prediction set, no gradient.

  pred: ``pred_masks`` [B, Q, h, w], ``pred_logits`` [B, Q, B + C], ``pred_logits_bertcls`` [B, Q, B];
  instance_masks [B, K, H, W]; coords [B, P, 2]: the points shared by every mask of a sample.
  cost = mask * BCE_pts + mask_dice * Dice_pts (+1 smoothing) - clip_ce * softmax(clip)[:, b]
         - bert_cls * sigmoid(bert)[:, b].
  """
  pred = jax.tree.map(jax.lax.stop_gradient, pred)
  out = _sample(pred["pred_masks"], coords).astype(jnp.float32)        # [B, Q, P]
  tgt = _sample(instance_masks, coords.astype(jnp.float32)).astype(jnp.float32)  # [B, K, P]
  p = out.shape[-1]
  pos, neg = jax.nn.softplus(-out), jax.nn.softplus(out)              # BCE against 1 / 0
  cost_mask = (jnp.einsum("bqp,bkp->bqk", pos, tgt) + jnp.einsum("bqp,bkp->bqk", neg, 1 - tgt)) / p
  prob = jax.nn.sigmoid(out)
  cost_dice = 1 - (2 * jnp.einsum("bqp,bkp->bqk", prob, tgt) + 1) / (
      prob.sum(-1)[:, :, None] + tgt.sum(-1)[:, None, :] + 1)
  b = out.shape[0]
  diag = lambda m: m[jnp.arange(b), :, jnp.arange(b)]                   # [B, Q]: column b of sample b
  cost_clip = -diag(jax.nn.softmax(pred["pred_logits"].astype(jnp.float32), axis=-1))
  cost_bert = -diag(jax.nn.sigmoid(pred["pred_logits_bertcls"].astype(jnp.float32)))
  return (weights.mask * cost_mask + weights.mask_dice * cost_dice
          + (weights.clip_ce * cost_clip + weights.bert_cls * cost_bert)[:, :, None])


def linear_sum_assignment(cost, valid=None):
  """Minimum-cost assignment of each row of cost [R, C] (R <= C) to a distinct column, in JAX.

  The shortest augmenting path algorithm of scipy.optimize.linear_sum_assignment (Crouse 2016),
  one row at a time, with lax loops (jit/vmap-able). Rows with ``valid`` False are left
  unassigned and do not constrain the others. Returns col4row [R] int32 (-1 where not valid).
  Non-finite costs are replaced by +-1e9 and both loops are bounded, so a NaN loss cannot hang
  the step (it yields some assignment, and the non-finite loss is caught downstream).
  """
  r, c = cost.shape
  if r > c:
    raise ValueError(f"linear_sum_assignment needs rows <= columns, got {cost.shape}")
  cost = jnp.nan_to_num(cost.astype(jnp.float32), nan=1e9, posinf=1e9, neginf=-1e9)
  valid = jnp.ones((r,), bool) if valid is None else valid
  inf = jnp.float32(jnp.inf)

  def add_row(cur, state):
    u, v, col4row, row4col = state

    def search(s):
      i, min_val, sink, shortest, path, sr, sc, it = s
      sr = sr.at[i].set(True)
      red = min_val + cost[i] - u[i] - v
      better = ~sc & (red < shortest)
      path = jnp.where(better, i, path)
      shortest = jnp.where(better, red, shortest)
      # the closest unvisited column; among equals prefer a free one (a sink), as scipy does
      key = jnp.where(sc, inf, shortest)
      lowest = key.min()
      j = jnp.argmax((key == lowest) & (row4col == -1))
      j = jnp.where(((key == lowest) & (row4col == -1)).any(), j, jnp.argmin(key))
      sc = sc.at[j].set(True)
      free = row4col[j] == -1
      sink = jnp.where(free | (it >= r), j, -1)  # every step but the last visits an assigned column
      return (jnp.where(free, i, row4col[j]), lowest, sink, shortest, path, sr, sc, it + 1)

    init = (cur, jnp.float32(0), jnp.int32(-1), jnp.full((c,), inf), jnp.full((c,), -1, jnp.int32),
            jnp.zeros((r,), bool), jnp.zeros((c,), bool), jnp.int32(0))
    _, min_val, sink, shortest, path, sr, sc, _ = jax.lax.while_loop(lambda s: s[2] < 0, search, init)
    # dual update
    assigned_short = shortest[jnp.clip(col4row, 0, c - 1)]
    u = jnp.where(sr & (jnp.arange(r) != cur), u + min_val - assigned_short, u)
    u = u.at[cur].add(min_val)
    v = jnp.where(sc, v - (min_val - shortest), v)

    # augment along the path back to the new row
    def step(s):
      j, _, col4row, row4col, it = s
      i = jnp.where(it >= r, cur, path[j])  # a path has at most R steps
      row4col = row4col.at[j].set(i)
      prev = col4row[i]
      col4row = col4row.at[i].set(j)
      return prev, i, col4row, row4col, it + 1

    _, _, col4row, row4col, _ = jax.lax.while_loop(lambda s: s[1] != cur, step,
                                                   (sink, jnp.int32(-1), col4row, row4col, jnp.int32(0)))
    return u, v, col4row, row4col

  def body(cur, state):
    return jax.lax.cond(valid[cur], add_row, lambda _, s: s, cur, state)

  init = (jnp.zeros((r,), jnp.float32), jnp.zeros((c,), jnp.float32),
          jnp.full((r,), -1, jnp.int32), jnp.full((c,), -1, jnp.int32))
  _, _, col4row, _ = jax.lax.fori_loop(0, r, body, init)
  return col4row


def _scipy_match(cost, valid):
  """Host side of the scipy matcher: cost [..., Q, K], valid [..., K] -> [..., K] int32."""
  from scipy.optimize import linear_sum_assignment as lsa  # noqa: PLC0415 (host callback only)
  cost, valid = np.asarray(cost), np.asarray(valid)
  out = np.full(valid.shape, -1, np.int32)
  for idx in np.ndindex(valid.shape[:-1]):
    cols = np.flatnonzero(valid[idx])
    if cols.size:
      rows, picked = lsa(cost[idx][:, cols])
      out[idx + (cols[picked],)] = rows
  return out


def hungarian_match(cost, valid, matcher: str = "jax"):
  """cost [B, Q, K], valid [B, K] -> the query matched to each GT slot [B, K] int32 (-1 padding)."""
  cost = jax.lax.stop_gradient(cost)
  if matcher == "scipy":
    return jax.pure_callback(_scipy_match, jax.ShapeDtypeStruct(valid.shape, jnp.int32), cost, valid,
                             vmap_method="broadcast_all")
  if matcher != "jax":
    raise ValueError(f"matcher must be 'jax' or 'scipy', got {matcher!r}")
  return jax.vmap(linear_sum_assignment)(jnp.swapaxes(cost, 1, 2), valid)


# ------------------------------------------------------------------------------------------
# Set-loss terms.


def _matched_queries(match, valid, num_queries: int):
  """[B, Q] bool: the queries matched to some valid GT instance."""
  hit = (match[..., None] == jnp.arange(num_queries)) & valid[..., None]
  return hit.any(axis=1)


def mask_losses(pred_masks, instance_masks, match, valid, coords, num_masks):
  """Point BCE and Dice (+1 smoothing) of each matched (query, instance) pair, summed / num_masks.

  pred_masks [B, Q, h, w] logits; instance_masks [B, K, H, W]; match/valid [B, K];
  coords [B, K, P, 2]: the points of each GT slot (see `importance_points`).
  """
  b, k = valid.shape
  src = jnp.take_along_axis(pred_masks, jnp.maximum(match, 0)[:, :, None, None], axis=1)  # [B, K, h, w]
  flat = lambda a: a.reshape(b * k, *a.shape[2:])
  logits = _sample_each(flat(src), flat(coords))
  labels = jax.lax.stop_gradient(_sample_each(flat(instance_masks).astype(logits.dtype), flat(coords)))
  keep = valid.reshape(-1).astype(logits.dtype)
  bce = _bce_with_logits(logits, labels).mean(-1)
  p = jax.nn.sigmoid(logits)
  dice = 1 - (2 * (p * labels).sum(-1) + 1) / (p.sum(-1) + labels.sum(-1) + 1)
  return (bce * keep).sum() / num_masks, (dice * keep).sum() / num_masks


def clip_ce_loss(logits, match, valid, no_object_weight: float = 0.1):
  """Weighted CE over the B + C columns of logits [B, Q, B + C]: a query matched in sample b
  targets column b, every other query the last ("background") column of weight `no_object_weight`;
  torch's weighted mean (sum of w_y * nll / sum of w_y)."""
  b, q, n = logits.shape
  target = jnp.where(_matched_queries(match, valid, q), jnp.arange(b)[:, None], n - 1)
  w = jnp.ones((n,), jnp.float32).at[n - 1].set(no_object_weight)[target]
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, target[..., None], axis=-1)[..., 0]
  return (w * nll).sum() / w.sum()


def same_category(labels):
  """[B] COCO category ids (negative = none, e.g. a no-target sample) -> [B, B] bool, True where
  two different samples share a category (the official matrix_same_cococlass for one label each)."""
  same = (labels[:, None] == labels[None, :]) & (labels[:, None] >= 0)
  return same & ~jnp.eye(labels.shape[0], dtype=bool)


def bert_cls_loss(logits, match, valid, same=None):
  """BCE with logits averaged over (B, Q, B): target 1 at (b, matched q, b). With `same` [B, B]
  (see `same_category`), the (b, ., b') terms of samples sharing a category get weight 0."""
  b, q, _ = logits.shape
  target = _matched_queries(match, valid, q)[:, :, None] & jnp.eye(b, dtype=bool)[:, None, :]
  loss = _bce_with_logits(logits.astype(jnp.float32), target.astype(jnp.float32))
  if same is not None:
    loss = loss * (~(same & ~jnp.eye(b, dtype=bool)))[:, None, :].astype(loss.dtype)
  return loss.mean()


def no_target_loss(nt_logits, empty, class_weights=(0.9, 1.1)):
  """Weighted CE of the no-target logits [B, 2] against empty [B] (1 = no target)."""
  y = empty.astype(jnp.int32)
  w = jnp.asarray(class_weights, jnp.float32)[y]
  logp = jax.nn.log_softmax(nt_logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, y[:, None], axis=-1)[:, 0]
  return (w * nll).sum() / w.sum()


def set_loss(pred, targets, key, weights: LossWeights = LossWeights(), num_masks=None, *,
             match=None, match_coords=None, loss_coords=None):
  """The unweighted DFAM terms of one prediction set -> ({loss_mask, loss_dice, loss_ce,
  loss_ce_bertcls}, match [B, K]). Draws the matching points [B, P, 2] and the loss points
  [B, K, P, 2] from `key` unless given; `match` skips the matching."""
  masks, valid = targets["instance_masks"], targets["instance_valid"]
  b, k = valid.shape
  k_match, k_loss = jax.random.split(key)
  if match is None:
    if match_coords is None:
      match_coords = jax.random.uniform(k_match, (b, weights.num_points, 2), jnp.float32)
    match = hungarian_match(matching_cost(pred, masks, match_coords, weights), valid, weights.matcher)
  if loss_coords is None:
    src = jnp.take_along_axis(pred["pred_masks"], jnp.maximum(match, 0)[:, :, None, None], axis=1)
    loss_coords = importance_points(k_loss, src.reshape(b * k, *src.shape[2:]), weights.num_points,
                                    weights.oversample_ratio, weights.importance_sample_ratio)
    loss_coords = loss_coords.reshape(b, k, *loss_coords.shape[1:])
  if num_masks is None:
    num_masks = jnp.maximum(valid.sum(), 1).astype(jnp.float32)
  same = None
  if weights.same_category_mask:
    if "same_category" not in targets:
      raise ValueError("same_category_mask needs targets['same_category'] [B, B] (see same_category())")
    same = targets["same_category"]
  loss_mask, loss_dice = mask_losses(pred["pred_masks"], masks, match, valid, loss_coords, num_masks)
  terms = {"loss_mask": loss_mask, "loss_dice": loss_dice,
           "loss_ce": clip_ce_loss(pred["pred_logits"], match, valid, weights.no_object),
           "loss_ce_bertcls": bert_cls_loss(pred["pred_logits_bertcls"], match, valid, same)}
  return terms, match


def bridge_loss(outputs, targets, key, weights: LossWeights | None = None, *,
                matches=None, match_coords=None, loss_coords=None):
  """The bridge's training loss -> (total, {term: weighted value}).

  outputs: ``sam_logits`` [B, H, W] (the SAM decoder's mask logits at the GT resolution) and
    DFAM's output dict (``pred_masks``, ``pred_logits``, ``pred_logits_bertcls``, ``aux_outputs``,
    optionally ``nt_label``).
  targets: ``mask`` [B, H, W] merged GT, ``instance_masks`` [B, K, H, W], ``instance_valid`` [B, K]
    bool, optionally ``empty`` [B] bool (default: no valid instance) and ``same_category`` [B, B].
  key: PRNG key of the matching and loss points.
  matches / match_coords / loss_coords: optional lists over the sets [final, aux 0, aux 1, ...]
    of injected matchings [B, K], matching points [B, P, 2] and loss points [B, K, P, 2].

  Terms: main_mask_bce_loss, main_mask_dice_loss; loss_{mask,dice,ce,ce_bertcls} for the final
  set and with suffix _i for aux set i (already times their weight and ``weights.dfam``);
  nt_loss when the outputs carry ``nt_label``.
  """
  w = weights or LossWeights()
  valid = targets["instance_valid"]
  empty = targets.get("empty")
  if empty is None:
    empty = ~valid.any(axis=1)
  terms = {}
  terms["main_mask_bce_loss"], terms["main_mask_dice_loss"] = sam_mask_loss(
      outputs["sam_logits"], targets["mask"], empty, w.bce, w.dice)
  # The final set and the auxiliary ones have the same shapes: one vmapped set loss instead of a
  # Python loop runs one batched matcher loop, not one after another per set.
  sets = [outputs] + list(outputs.get("aux_outputs", []))
  stacked = {n: jnp.stack([s[n] for s in sets]) for n in ("pred_masks", "pred_logits", "pred_logits_bertcls")}
  stack = lambda seq: None if seq is None else jnp.stack(seq)
  num_masks = jnp.maximum(valid.sum(), 1).astype(jnp.float32)

  def one_set(pred, k, match, match_coords, loss_coords):
    return set_loss(pred, targets, k, w, num_masks, match=match, match_coords=match_coords,
                    loss_coords=loss_coords)[0]

  set_terms = jax.vmap(one_set)(stacked, jax.random.split(key, len(sets)), stack(matches),
                                stack(match_coords), stack(loss_coords))
  scale = {"loss_mask": w.mask, "loss_dice": w.mask_dice, "loss_ce": w.clip_ce, "loss_ce_bertcls": w.bert_cls}
  for i in range(len(sets)):
    suffix = "" if i == 0 else f"_{i - 1}"
    terms.update({name + suffix: v[i] * scale[name] * w.dfam for name, v in set_terms.items()})
  if "nt_label" in outputs:
    terms["nt_loss"] = w.no_target * no_target_loss(outputs["nt_label"], empty, w.no_target_class_weights)
  return sum(terms.values()), terms
