"""Referring-segmentation metrics, computed the way the papers report them.

Protocol (wysnzzzz/DIT test.py + utils/utils.py; hustvl/EVF-SAM eval.py; gRefCOCO's
ReLA gres_model/evaluation/refer_evaluation.py):

1. A prediction at the model input resolution is cropped of its padding and resized
   back to the original image size (`restore_original`; bilinear, half-pixel centres,
   no antialiasing: DIT's cv2.resize and SAM's F.interpolate agree on this), then
   thresholded. DIT thresholds sigmoid > 0.35 at 512x512 *before* restoring and counts a
   restored pixel as foreground when it is > 0; SAM/EVF restore logits and take > 0.
   Both are `RisMetrics(threshold=0.0)` on the restored map.
2. Per expression: I = |pred & gt|, U = |pred | gt|, IoU = (I + 1e-10) / (U + 1e-10) as
   in DIT's mask_iou, which is 1 when both masks are empty (gRefCOCO's convention for a
   correct no-target prediction) and I / U otherwise.
3. oIoU = cIoU = sum I / sum U (cumulative, "overall" IoU); mIoU = gIoU = mean IoU;
   P@X = % of expressions with a target whose IoU > X, for X = np.arange(0.5, 1, 0.05)[0,
   2, 4, 6, 8] exactly as DIT indexes it (so 0.7 is 0.7000000000000002).
4. gRefCOCO (reported when the data has no-target expressions): a prediction "says no
   target" when its mask is empty, or by an explicit `pred_no_target` flag (ReLA's
   no-target head; then, as in ReLA, a no-target call on a no-target expression counts
   I = U = 0 and IoU 1, on a targeted one I = 0 with U kept). N-acc = % of no-target
   expressions called no-target; T-acc = % of targeted expressions not called
   no-target. P@X counts targeted expressions only, as ReLA does.

All values are percentages; undefined ones (e.g. oIoU with no union at all) are NaN.
"""

import numpy as np

from jaxris.ops.resize import resize_hw

__all__ = ["PRECISION_THRESHOLDS", "restore_original", "iou_counts", "RisMetrics"]

# DIT's thresholds, np.arange(0.5, 1, 0.05) at indices 0, 2, 4, 6, 8, as reported names.
_ARANGE = np.arange(0.5, 1, 0.05)
PRECISION_THRESHOLDS = {f"P@{x:.1f}": float(_ARANGE[i])
                        for x, i in zip((0.5, 0.6, 0.7, 0.8, 0.9), (0, 2, 4, 6, 8))}


def _restore_one(pred, orig_size, resized_size, pad_offset):
  height, width = (int(v) for v in orig_size)
  new_h, new_w = (int(v) for v in resized_size)
  top, left = (int(v) for v in pad_offset)
  if height == 0 or width == 0:  # A padding example.
    return np.zeros((height, width), np.float32)
  if top < 0 or left < 0 or top + new_h > pred.shape[0] or left + new_w > pred.shape[1]:
    raise ValueError(f"Resized region {new_h}x{new_w} at ({top}, {left}) does not fit the "
                     f"prediction of shape {pred.shape}.")
  crop = pred[top:top + new_h, left:left + new_w].astype(np.float32)
  if (new_h, new_w) == (height, width):
    return crop
  return resize_hw(crop, (height, width), "bilinear")


def restore_original(pred, meta):
  """Crops the padding off predictions and resizes them to the original image size.

  Args:
    pred: [S, S] or [B, S, S] (logits, probabilities or a 0/1 mask; also [..., 1]).
    meta: mapping with orig_size, resized_size, pad_offset ((h, w), (h, w), (top, left)),
      [2] for one prediction or [B, 2] for a batch: a batch from
      `jaxris.data.loader.make_dataset` works as is.

  Returns:
    float32 [H, W], or for a batch a list of float32 [H_i, W_i] (0x0 for padding).
  """
  pred = np.asarray(pred)
  if pred.ndim >= 3 and pred.shape[-1] == 1:
    pred = pred[..., 0]
  keys = ("orig_size", "resized_size", "pad_offset")
  missing = [k for k in keys if k not in meta]
  if missing:
    raise ValueError(f"restore_original needs {missing} in meta (the loader's batch fields).")
  sizes = [np.asarray(meta[k]) for k in keys]
  if pred.ndim == 2:
    return _restore_one(pred, *sizes)
  if pred.ndim != 3 or any(s.shape != (pred.shape[0], 2) for s in sizes):
    raise ValueError(f"pred must be [S, S] or [B, S, S] with meta fields [B, 2]; got pred "
                     f"{pred.shape} and {[s.shape for s in sizes]}.")
  return [_restore_one(p, *(s[i] for s in sizes)) for i, p in enumerate(pred)]


def iou_counts(pred_mask, gt_mask) -> tuple[int, int]:
  """(|pred & gt|, |pred | gt|) of two boolean masks of the same shape."""
  pred_mask, gt_mask = np.asarray(pred_mask, bool), np.asarray(gt_mask, bool)
  if pred_mask.shape != gt_mask.shape:
    raise ValueError(f"Prediction shape {pred_mask.shape} differs from the ground truth's "
                     f"{gt_mask.shape}; restore predictions to the original size first.")
  return (int(np.count_nonzero(pred_mask & gt_mask)),
          int(np.count_nonzero(pred_mask | gt_mask)))


# Accumulator layout: sums that simply add up across batches and processes.
_FIELDS = ("count", "inter", "union", "iou_sum", "targets", "no_targets", "tp", "fn", "tn",
           "fp") + tuple(PRECISION_THRESHOLDS)


class RisMetrics:
  """Accumulates oIoU/cIoU, mIoU/gIoU, P@0.5..0.9 and gRefCOCO's N-acc/T-acc.

    metrics = RisMetrics()
    for batch in dataset.as_numpy_iterator():
      preds = restore_original(model_logits(batch), batch)
      metrics.update(preds, original_masks(examples, batch), valid=batch["_mask"])
    metrics.result()  # {"oIoU": ..., "mIoU": ..., "P@0.5": ..., ...}

  Multi-host: sum `state()` over processes (e.g. multihost_utils.process_allgather(...)
  .sum(0)) and call `RisMetrics.from_state(total).result()`.
  """

  def __init__(self, threshold: float = 0.0):
    """`threshold`: a predicted pixel is foreground when its value is > threshold
    (boolean predictions are used as they are); ground truth is foreground when > 0.5."""
    self.threshold = float(threshold)
    self._sums = np.zeros(len(_FIELDS), np.float64)

  def update(self, pred, gt, valid=None, *, no_target=None, pred_no_target=None):
    """Adds a batch.

    Args:
      pred: [B, H, W] array or a list of [H_i, W_i] arrays at the original sizes.
      gt: the ground truth, same layout (uint8/bool/float masks).
      valid: optional bool [B]; False entries (padding) are skipped.
      no_target: optional bool [B]: the expression has no target (default: gt empty).
      pred_no_target: optional bool [B] from a no-target classifier (default: the
        predicted mask is empty).
    """
    n = len(pred)
    if len(gt) != n:
      raise ValueError(f"{n} predictions but {len(gt)} ground-truth masks.")
    flags = {name: None if v is None else np.asarray(v, bool).reshape(-1)
             for name, v in (("valid", valid), ("no_target", no_target),
                             ("pred_no_target", pred_no_target))}
    for name, v in flags.items():
      if v is not None and v.shape != (n,):
        raise ValueError(f"{name} has {v.shape[0]} entries for {n} predictions.")
    for i in range(n):
      if flags["valid"] is not None and not flags["valid"][i]:
        continue
      p = np.asarray(pred[i])
      p = p if p.dtype == np.bool_ else p > self.threshold
      g = np.asarray(gt[i]) > 0.5
      inter, union = iou_counts(p, g)
      gt_empty = bool(flags["no_target"][i]) if flags["no_target"] is not None else not g.any()
      said_empty = (bool(flags["pred_no_target"][i]) if flags["pred_no_target"] is not None
                    else not p.any())
      self._add(inter, union, gt_empty, said_empty)

  def _add(self, inter, union, gt_empty, said_empty):
    s = dict(zip(_FIELDS, self._sums))
    s["count"] += 1
    if gt_empty:
      s["no_targets"] += 1
      if said_empty:  # True positive: a correct "no target"; IoU 1.
        s["tp"] += 1
        inter, union = 0, 0
      else:
        s["fn"] += 1
        inter = 0
    else:
      s["targets"] += 1
      if said_empty:
        s["fp"] += 1
        inter = 0  # ReLA keeps the union of a targeted expression called "no target".
      else:
        s["tn"] += 1
    iou = (inter + 1e-10) / (union + 1e-10)
    s["inter"] += inter
    s["union"] += union
    s["iou_sum"] += iou
    if not gt_empty:
      for name, t in PRECISION_THRESHOLDS.items():
        s[name] += iou > t
    self._sums = np.array([s[k] for k in _FIELDS], np.float64)

  def state(self) -> np.ndarray:
    """float64 vector of sums; add the vectors of several accumulators to merge them."""
    return self._sums.copy()

  @classmethod
  def from_state(cls, state, threshold: float = 0.0) -> "RisMetrics":
    state = np.asarray(state, np.float64)
    if state.shape != (len(_FIELDS),):
      raise ValueError(f"state must have shape ({len(_FIELDS)},), got {state.shape}.")
    metrics = cls(threshold)
    metrics._sums = state.copy()
    return metrics

  def merge(self, other: "RisMetrics") -> "RisMetrics":
    self._sums = self._sums + other._sums
    return self

  def result(self) -> dict:
    """Percentages: oIoU, mIoU, cIoU (= oIoU), gIoU (= mIoU), P@0.5..P@0.9, count and,
    once a no-target expression was seen, N-acc and T-acc."""
    s = dict(zip(_FIELDS, self._sums))

    def pct(num, den):
      return float(100.0 * num / den) if den else float("nan")

    out = {"oIoU": pct(s["inter"], s["union"]), "mIoU": pct(s["iou_sum"], s["count"])}
    out["cIoU"], out["gIoU"] = out["oIoU"], out["mIoU"]
    for name in PRECISION_THRESHOLDS:
      out[name] = pct(s[name], s["targets"])
    if s["no_targets"]:
      out["N-acc"] = pct(s["tp"], s["tp"] + s["fn"])
      out["T-acc"] = pct(s["tn"], s["tn"] + s["fp"])
    out["count"] = int(s["count"])
    return out
