"""Metrics against hand-computed values, and restoring predictions to the original size."""

import math

import numpy as np
import pytest
import torch  # Before TensorFlow (see test_pipeline.py).
import torch.nn.functional as F

from jaxris import metrics


def box(shape, y0, y1, x0, x1):
  m = np.zeros(shape, np.uint8)
  m[y0:y1, x0:x1] = 1
  return m


def test_refcoco_metrics_by_hand():
  shape = (10, 10)
  gt = [box(shape, 0, 4, 0, 5),    # 20 px
        box(shape, 0, 10, 0, 10),  # 100 px
        box(shape, 2, 4, 2, 4)]    # 4 px
  pred = [box(shape, 0, 4, 0, 4),  # I 16, U 20 -> 0.8
          box(shape, 0, 5, 0, 10),  # I 50, U 100 -> 0.5
          box(shape, 6, 8, 6, 8)]  # I 0, U 8 -> 0
  m = metrics.RisMetrics(threshold=0.5)
  m.update(np.stack(pred).astype(np.float32), np.stack(gt))
  r = m.result()
  assert r["oIoU"] == pytest.approx(100 * 66 / 128)  # (16 + 50 + 0) / (20 + 100 + 8)
  assert r["mIoU"] == pytest.approx(100 * 1.3 / 3, abs=1e-6)
  assert r["cIoU"] == r["oIoU"] and r["gIoU"] == r["mIoU"]
  # DIT counts IoU > t with IoU = (I + 1e-10) / (U + 1e-10): an IoU of exactly 0.5 or 0.8
  # passes P@0.5 / P@0.8.
  assert r["P@0.5"] == pytest.approx(200 / 3) and r["P@0.6"] == pytest.approx(100 / 3)
  assert r["P@0.7"] == pytest.approx(100 / 3) and r["P@0.8"] == pytest.approx(100 / 3)
  assert r["P@0.9"] == 0.0
  assert r["count"] == 3 and "N-acc" not in r


def test_threshold_logits_bool_and_valid():
  gt = box((4, 4), 0, 2, 0, 2)
  logits = np.where(gt > 0, 3.0, -3.0).astype(np.float32)
  logits[3, 3] = 0.0  # Exactly at the threshold: background (> threshold is foreground).
  junk = np.ones((4, 4), np.float32)
  m = metrics.RisMetrics()  # threshold 0: logits.
  m.update([logits, junk, gt.astype(bool)], [gt, np.zeros((7, 7)), gt],
           valid=[True, False, True])  # The padding entry's shape does not matter.
  r = m.result()
  assert r["count"] == 2 and r["oIoU"] == 100.0 and r["P@0.9"] == 100.0


def test_grefcoco_no_target_convention_nacc_tacc_by_hand():
  shape = (6, 6)
  empty = np.zeros(shape, np.uint8)
  gt = [empty, empty, box(shape, 0, 2, 0, 3), box(shape, 0, 3, 0, 3)]
  pred = [empty,                 # no target, predicted empty: TP, IoU 1, I = U = 0
          box(shape, 0, 1, 0, 4),  # no target, predicted 4 px: FN, IoU 0, U 4
          box(shape, 0, 2, 0, 2),  # target 6 px, pred 4 inside: TN, I 4, U 6
          empty]                 # target 9 px, predicted empty: FP, I 0, U 9
  m = metrics.RisMetrics(threshold=0.5)
  m.update(pred, gt)
  r = m.result()
  assert r["gIoU"] == pytest.approx(100 * (1 + 0 + 4 / 6 + 0) / 4)
  assert r["cIoU"] == pytest.approx(100 * 4 / (0 + 4 + 6 + 9))
  assert r["N-acc"] == 50.0 and r["T-acc"] == 50.0
  assert r["P@0.5"] == 50.0 and r["P@0.7"] == 0.0  # Over the 2 targeted expressions.


def test_grefcoco_explicit_no_target_head_follows_rela():
  shape = (4, 4)
  gt = [np.zeros(shape), box(shape, 0, 2, 0, 2)]
  pred = [box(shape, 0, 1, 0, 1), box(shape, 0, 2, 0, 4)]  # Masks are non-empty...
  m = metrics.RisMetrics(threshold=0.5)
  m.update(pred, gt, pred_no_target=[True, True])  # ...but the head says "no target".
  r = m.result()
  # TP on the empty one (I = U = 0, IoU 1); FP on the targeted one: I = 0, U = 8 kept.
  assert r["gIoU"] == pytest.approx(50.0) and r["cIoU"] == 0.0
  assert r["N-acc"] == 100.0 and r["T-acc"] == 0.0
  m2 = metrics.RisMetrics(threshold=0.5)
  m2.update(pred, gt, no_target=[False, False])  # Explicit ground-truth flags.
  assert "N-acc" not in m2.result()


def test_state_merges_across_processes_and_undefined_is_nan():
  rng = np.random.default_rng(0)
  gts = [(rng.random((8, 8)) > 0.5).astype(np.uint8) for _ in range(6)]
  preds = [rng.random((8, 8)) for _ in range(6)]
  whole = metrics.RisMetrics(0.5)
  whole.update(preds, gts)
  halves = [metrics.RisMetrics(0.5), metrics.RisMetrics(0.5)]
  halves[0].update(preds[:4], gts[:4])
  halves[1].update(preds[4:], gts[4:])
  merged = metrics.RisMetrics.from_state(halves[0].state() + halves[1].state())
  assert merged.result() == whole.result()
  assert halves[0].merge(halves[1]).result() == whole.result()
  empty = metrics.RisMetrics().result()
  assert math.isnan(empty["oIoU"]) and math.isnan(empty["mIoU"]) and empty["count"] == 0


def test_shape_mismatch_is_a_clear_error():
  m = metrics.RisMetrics()
  with pytest.raises(ValueError, match="restore predictions to the original size"):
    m.update([np.zeros((4, 4))], [np.zeros((5, 4))])
  with pytest.raises(ValueError, match="2 predictions but 1"):
    m.update([np.zeros((4, 4))] * 2, [np.zeros((4, 4))])
  with pytest.raises(ValueError, match="valid has 1 entries for 2"):
    m.update([np.zeros((4, 4))] * 2, [np.zeros((4, 4))] * 2, valid=[True])


def test_restore_original_by_hand():
  # A 4x4 original shown as 2x2 at offset (1, 1) of a 4x4 input.
  pred = np.zeros((4, 4), np.float32)
  pred[1:3, 1:3] = [[0, 1], [0, 1]]
  meta = {"orig_size": [4, 4], "resized_size": [2, 2], "pad_offset": [1, 1]}
  out = metrics.restore_original(pred, meta)
  # Half-pixel bilinear 2 -> 4: source x = (j + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25,
  # clamped at both borders: weights of column 1 are 0, 0.25, 0.75, 1.
  np.testing.assert_allclose(out, np.tile([0, 0.25, 0.75, 1], (4, 1)), atol=1e-7)
  # No resize needed: only the crop.
  same = metrics.restore_original(pred, {"orig_size": [2, 2], "resized_size": [2, 2],
                                         "pad_offset": [1, 1]})
  np.testing.assert_array_equal(same, [[0, 1], [0, 1]])


def test_restore_original_matches_torch_bilinear_and_batches():
  rng = np.random.default_rng(0)
  pred = rng.standard_normal((3, 32, 32)).astype(np.float32)
  batch = {"orig_size": np.array([[45, 60], [7, 9], [0, 0]]),
           "resized_size": np.array([[24, 32], [25, 32], [0, 0]]),
           "pad_offset": np.array([[4, 0], [3, 0], [0, 0]])}
  out = metrics.restore_original(pred[..., None], batch)
  assert [o.shape for o in out] == [(45, 60), (7, 9), (0, 0)]  # The last is padding.
  for k in range(2):
    (h, w), (nh, nw), (top, left) = (batch[n][k] for n in batch)
    crop = torch.from_numpy(pred[k, top:top + nh, left:left + nw])[None, None]
    want = F.interpolate(crop, (int(h), int(w)), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(out[k], want[0, 0].numpy(), atol=1e-5)
  with pytest.raises(ValueError, match="does not fit"):
    metrics.restore_original(pred[0], {"orig_size": [9, 9], "resized_size": [30, 32],
                                       "pad_offset": [4, 0]})
  with pytest.raises(ValueError, match="needs.*pad_offset"):
    metrics.restore_original(pred[0], {"orig_size": [9, 9], "resized_size": [30, 32]})
