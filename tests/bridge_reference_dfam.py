"""PyTorch reference of the bridge's DFAM and its losses, written from the semantics in
shared/specs/bridge.md §4.4 and §5 (not copied from the official repository, which has no licence).

Layout and names follow the official modules so the test can copy weights across by name:
torch.nn.MultiheadAttention (sequence-first, fused in_proj), post-norm layers, the
Mask2Former-style point losses and the Hungarian matcher with scipy. Every random draw of the
official code (matching points, importance-sampling candidates) is an argument here, so the
test injects the same points into both implementations.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn


# ------------------------------------------------------------------------------------------
# DFAM.


def sine_position(h: int, w: int, num_feats: int, temperature: float = 10000.0) -> torch.Tensor:
  """[num_feats * 2, h, w]: sine encoding of an all-valid map, normalised to 2 pi, y then x."""
  y = torch.arange(1, h + 1, dtype=torch.float32)[:, None].expand(h, w)
  x = torch.arange(1, w + 1, dtype=torch.float32)[None, :].expand(h, w)
  y = y / (y[-1:, :] + 1e-6) * 2 * math.pi
  x = x / (x[:, -1:] + 1e-6) * 2 * math.pi
  k = torch.arange(num_feats, dtype=torch.float32)
  dim_t = temperature ** (2 * torch.div(k, 2, rounding_mode="floor") / num_feats)

  def enc(p):
    a = p[..., None] / dim_t
    return torch.stack([a[..., 0::2].sin(), a[..., 1::2].cos()], dim=-1).flatten(2)

  return torch.cat([enc(y), enc(x)], dim=-1).permute(2, 0, 1)


def _xavier(module: nn.Module):
  for p in module.parameters():
    if p.dim() > 1:
      nn.init.xavier_uniform_(p)


class SelfAttentionLayer(nn.Module):
  def __init__(self, d, heads):
    super().__init__()
    self.self_attn = nn.MultiheadAttention(d, heads)
    self.norm = nn.LayerNorm(d)
    _xavier(self)

  def forward(self, x, query_pos=None):
    q = x if query_pos is None else x + query_pos
    return self.norm(x + self.self_attn(q, q, value=x)[0])


class CrossAttentionLayer(nn.Module):
  def __init__(self, d, heads):
    super().__init__()
    self.multihead_attn = nn.MultiheadAttention(d, heads)
    self.norm = nn.LayerNorm(d)
    _xavier(self)

  def forward(self, x, memory, mask, pos, query_pos=None):
    q = x if query_pos is None else x + query_pos
    return self.norm(x + self.multihead_attn(q, memory + pos, value=memory, attn_mask=mask)[0])


class FFNLayer(nn.Module):
  def __init__(self, d, hidden):
    super().__init__()
    self.linear1 = nn.Linear(d, hidden)
    self.linear2 = nn.Linear(hidden, d)
    self.norm = nn.LayerNorm(d)
    _xavier(self)

  def forward(self, x):
    return self.norm(x + self.linear2(F.relu(self.linear1(x))))


class MLP(nn.Module):
  def __init__(self, din, hidden, dout, n):
    super().__init__()
    dims = [din] + [hidden] * (n - 1) + [dout]
    self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

  def forward(self, x):
    for i, layer in enumerate(self.layers):
      x = layer(x)
      if i < len(self.layers) - 1:
        x = F.relu(x)
    return x


class DfamRef(nn.Module):
  """DFAM per spec §4.4. Inputs NCHW; attention masks [B, Q, hw] bool, True = blocked."""

  def __init__(self, hidden=256, queries=100, heads=8, ffn=1024, layers=3, clip_dim=768, bert_dim=256,
               no_target_head=False):
    super().__init__()
    self.heads, self.layers = heads, layers
    self.logit_scale = nn.Parameter(torch.ones([]))
    self.logit_scale_condsim = nn.Parameter(torch.ones([]))
    mk = lambda f: nn.ModuleList(f() for _ in range(layers))
    self.SA_layers = mk(lambda: SelfAttentionLayer(hidden, heads))
    self.SA_layers2 = mk(lambda: SelfAttentionLayer(hidden, heads))
    self.CA_layers = mk(lambda: CrossAttentionLayer(hidden, heads))
    self.CA_layers2 = mk(lambda: CrossAttentionLayer(hidden, heads))
    self.transformer_ffn_layers = mk(lambda: FFNLayer(hidden, ffn))
    self.transformer_ffn_layers2 = mk(lambda: FFNLayer(hidden, ffn))
    self.decoder_norm1 = nn.LayerNorm(hidden)
    self.decoder_norm2 = nn.LayerNorm(hidden)
    self.query_feat = nn.Embedding(queries, hidden)
    self.query_embed = nn.Embedding(queries, hidden)
    self.level_embed = nn.Embedding(3, hidden)
    self.v_embed = nn.Linear(hidden, hidden)
    self.to_logits = nn.Linear(hidden, clip_dim)
    self.to_logits_bert = nn.Linear(hidden, bert_dim)
    self.mask_embed = MLP(hidden, hidden, hidden, 3)
    if no_target_head:
      self.nt_embed = MLP(hidden, hidden, 2, 2)

  def mask_head(self, x, e):  # x [Q, B, C]
    return torch.einsum("bqc,bchw->bqhw", self.mask_embed(self.decoder_norm1(x).transpose(0, 1)), e)

  def sem_head(self, y, text, bert):
    norm = lambda v: v / (v.norm(dim=-1, keepdim=True) + 1e-7)
    o = self.v_embed(self.decoder_norm2(y).transpose(0, 1))
    clip = self.logit_scale_condsim.exp() * norm(self.to_logits(o)) @ norm(text).t()
    bert = self.logit_scale.exp() * norm(self.to_logits_bert(o)) @ norm(bert).t()
    return clip, bert, o

  def attn_mask(self, masks, size):
    small = F.interpolate(masks, size=size, mode="bilinear", align_corners=False)
    return (small.sigmoid().flatten(2) < 0.5).detach()

  def _heads(self, m):  # [B, Q, S] -> [B * heads, Q, S], rows blocked everywhere unblocked
    m = m.clone()
    m[m.sum(-1) == m.shape[-1]] = False
    return m.unsqueeze(1).repeat(1, self.heads, 1, 1).flatten(0, 1)

  def forward(self, clip_feats, sam_feats, e, bert_cls, sot, class_text, attn_masks=None):
    b = e.shape[0]

    def memory(feats):
      src = [f.flatten(2).permute(2, 0, 1) + self.level_embed.weight[i] for i, f in enumerate(feats)]
      pos = [sine_position(*f.shape[-2:], f.shape[1] // 2).flatten(1).t()[:, None] for f in feats]
      return src, pos, [tuple(f.shape[-2:]) for f in feats]

    src_c, pos_c, size_c = memory(clip_feats)
    src_s, pos_s, size_s = memory(sam_feats)
    text = torch.cat([sot[None].repeat(b, 1), class_text])
    qpos = self.query_embed.weight[:, None].repeat(1, b, 1)
    x = self.query_feat.weight[:, None].repeat(1, b, 1)

    def predict(x, y):
      clip, bert, o = self.sem_head(y, text, bert_cls)
      return {"pred_masks": self.mask_head(x, e), "pred_logits": clip, "pred_logits_bertcls": bert}, o

    pred, o = predict(x, x)
    preds = [pred]
    for i in range(self.layers):
      lvl = i % 3
      if attn_masks is None:
        am_s, am_c = self.attn_mask(pred["pred_masks"], size_s[lvl]), self.attn_mask(pred["pred_masks"], size_c[lvl])
      else:
        am_s, am_c = attn_masks[i]
      x = self.CA_layers[i](x, src_s[lvl], self._heads(am_s), pos_s[lvl], qpos)
      x = self.SA_layers[i](x, qpos)
      x = self.transformer_ffn_layers[i](x)
      y = self.CA_layers2[i](x, src_c[lvl], self._heads(am_c), pos_c[lvl])
      y = self.SA_layers2[i](y)
      y = self.transformer_ffn_layers2[i](y)
      pred, o = predict(x, y)
      preds.append(pred)
    out = {**preds[-1], "aux_outputs": preds[:-1], "obj_emb": o}
    if hasattr(self, "nt_embed"):
      out["nt_label"] = self.nt_embed(o).max(dim=1)[0]
    return out


# ------------------------------------------------------------------------------------------
# Losses.


def point_sample(x, coords):
  """x [N, C, H, W], coords [N, P, 2] in [0, 1] -> [N, C, P] (grid_sample, align_corners=False)."""
  return F.grid_sample(x, (2 * coords - 1)[:, :, None], mode="bilinear", padding_mode="zeros",
                       align_corners=False)[..., 0]


def uncertain_points(logits, candidates, extra, num_uncertain):
  """logits [N, 1, H, W]; candidates [N, P_over, 2]; extra [N, P_rand, 2]: Mask2Former's
  importance sampling with its random draws given."""
  unc = -point_sample(logits, candidates)[:, 0].abs()
  idx = torch.topk(unc, k=num_uncertain, dim=1)[1]
  picked = torch.gather(candidates, 1, idx[..., None].expand(-1, -1, 2))
  return torch.cat([picked, extra], dim=1)


def sam_mask_loss(pred, gt, empty, bce_w=2.0, dice_w=0.5):
  """Official per-sample loop: pred/gt [B, H, W]; empty list of bool."""
  bce_sum = dice_sum = 0.0
  for i in range(pred.shape[0]):
    p, t = pred[i:i + 1], gt[i:i + 1].float()
    scale = 0.0 if empty[i] else 1.0
    bce_sum = bce_sum + F.binary_cross_entropy_with_logits(p, t, reduction="none").flatten(1).mean(1).sum() * scale
    s = p.sigmoid().flatten(1)
    tt = t.flatten(1)
    d = 1 - (2 * (s / 1000 * tt).sum(-1) + 1e-6) / ((s / 1000).sum(-1) + (tt / 1000).sum(-1) + 1e-6)
    dice_sum = dice_sum + d.sum() * scale
  n = pred.shape[0]
  return bce_w * bce_sum / n, dice_w * dice_sum / n


def match(pred, targets, coords, w_mask=5.0, w_dice=5.0, w_class=2.0, w_bert=1.0):
  """Hungarian matching per sample with the given points coords[b] [P, 2]. targets: list of dicts
  with 'masks' [K_b, H, W]. Returns [(query idx, target idx)] per sample."""
  out = []
  for b, t in enumerate(targets):
    with torch.no_grad():
      om = pred["pred_masks"][b][:, None]
      tm = t["masks"][:, None].float()
      c = coords[b][None]
      op = point_sample(om, c.repeat(om.shape[0], 1, 1))[:, 0]
      tp = point_sample(tm, c.repeat(tm.shape[0], 1, 1))[:, 0]
      hw = op.shape[1]
      pos = F.binary_cross_entropy_with_logits(op, torch.ones_like(op), reduction="none")
      neg = F.binary_cross_entropy_with_logits(op, torch.zeros_like(op), reduction="none")
      cost_mask = (pos @ tp.t() + neg @ (1 - tp).t()) / hw
      s = op.sigmoid()
      cost_dice = 1 - (2 * s @ tp.t() + 1) / (s.sum(-1)[:, None] + tp.sum(-1)[None] + 1)
      cost_class = -pred["pred_logits"][b].softmax(-1)[:, [b]]
      cost_bert = -pred["pred_logits_bertcls"][b].sigmoid()[:, [b]]
      cost = w_mask * cost_mask + w_dice * cost_dice + w_class * cost_class + w_bert * cost_bert
    rows, cols = linear_sum_assignment(cost.numpy())
    out.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
  return out


def set_losses(pred, targets, indices, loss_coords, num_masks, eos=0.1, labels=None):
  """Unweighted loss_mask, loss_dice, loss_ce, loss_ce_bertcls of one set. loss_coords [B, K, P, 2]
  (the points of target slot (b, k)); labels: per-sample category ids for the weight mask."""
  b_idx = torch.cat([torch.full_like(s, i) for i, (s, _) in enumerate(indices)])
  q_idx = torch.cat([s for s, _ in indices])
  k_idx = torch.cat([t for _, t in indices])
  # masks
  src = pred["pred_masks"][b_idx, q_idx][:, None]
  tgt = torch.cat([targets[b]["masks"][k][None] for b, k in zip(b_idx.tolist(), k_idx.tolist())]
                  or [torch.zeros((0,) + tuple(targets[0]["masks"].shape[1:]))]).float()[:, None]
  coords = loss_coords[b_idx, k_idx]
  pl = point_sample(tgt, coords)[:, 0]
  lg = point_sample(src, coords)[:, 0]
  loss_mask = F.binary_cross_entropy_with_logits(lg, pl, reduction="none").mean(1).sum() / num_masks
  s = lg.sigmoid()
  loss_dice = (1 - (2 * (s * pl).sum(-1) + 1) / (s.sum(-1) + pl.sum(-1) + 1)).sum() / num_masks
  # CLIP-stream CE
  logits = pred["pred_logits"]
  bz, nq, n = logits.shape
  weight = torch.ones(n)
  weight[-1] = eos
  target = torch.full((bz, nq), n - 1, dtype=torch.int64)
  target[b_idx, q_idx] = b_idx
  loss_ce = F.cross_entropy(logits.transpose(1, 2), target, weight)
  # BERT [CLS] BCE
  bl = pred["pred_logits_bertcls"]
  bt = torch.zeros_like(bl)
  bt[b_idx, q_idx, b_idx] = 1.0
  if labels is None:
    loss_bert = F.binary_cross_entropy_with_logits(bl, bt)
  else:
    lab = torch.as_tensor(labels)
    same = (lab[:, None] == lab[None, :]) & (lab[:, None] >= 0)
    wm = torch.ones_like(bl) * ~same[:, None, :]
    d = torch.arange(bz)
    wm[d, :, d] = 1
    loss_bert = F.binary_cross_entropy_with_logits(bl, bt, wm)
  return {"loss_mask": loss_mask, "loss_dice": loss_dice, "loss_ce": loss_ce, "loss_ce_bertcls": loss_bert}


def no_target_loss(nt, empty, weight=(0.9, 1.1)):
  return F.cross_entropy(nt, torch.as_tensor(empty, dtype=torch.int64), torch.tensor(weight))


def total_loss(outputs, sam_logits, gt_merged, targets, match_coords, loss_coords, labels=None,
               scale=(("loss_mask", 5.0), ("loss_dice", 5.0), ("loss_ce", 2.0), ("loss_ce_bertcls", 1.0))):
  """Every term of the official training loss with the given points; match_coords / loss_coords
  are lists over the sets [final, aux 0, aux 1, aux 2]. Returns (total, terms, indices)."""
  empty = [bool(t["empty"]) for t in targets]
  terms = {}
  terms["main_mask_bce_loss"], terms["main_mask_dice_loss"] = sam_mask_loss(sam_logits, gt_merged, empty)
  num_masks = max(sum(len(t["masks"]) for t in targets), 1)
  sets = [outputs] + outputs["aux_outputs"]
  all_indices = []
  for i, pred in enumerate(sets):
    idx = match(pred, targets, match_coords[i])
    all_indices.append(idx)
    t = set_losses(pred, targets, idx, loss_coords[i], num_masks, labels=labels)
    suffix = "" if i == 0 else f"_{i - 1}"
    terms.update({k + suffix: t[k] * w for k, w in scale})
  if "nt_label" in outputs:
    terms["nt_loss"] = 0.1 * no_target_loss(outputs["nt_label"], empty)
  return sum(terms.values()), terms, all_indices


def indices_to_slots(indices, k_max):
  """[(rows, cols)] per sample -> [B, K] numpy: the query matched to each GT slot, -1 for none."""
  out = np.full((len(indices), k_max), -1, np.int32)
  for b, (rows, cols) in enumerate(indices):
    out[b, cols.numpy()] = rows.numpy()
  return out
