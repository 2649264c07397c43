"""Numerical comparison used by every parity test (DESIGN.md: max abs error <= tol * scale)."""

import numpy as np


def to_numpy(x) -> np.ndarray:
  if hasattr(x, "detach"):
    x = x.detach().cpu().numpy()
  return np.asarray(x, dtype=np.float64)


def assert_close(actual, expected, tol: float = 1e-4, what: str = "output") -> float:
  """Asserts max|actual - expected| <= tol * max(max|expected|, 1e-6); returns the relative error."""
  a, e = to_numpy(actual), to_numpy(expected)
  assert a.shape == e.shape, f"{what}: shape {a.shape} != reference {e.shape}"
  assert np.all(np.isfinite(a)), f"{what}: non-finite values"
  if e.size == 0:
    return 0.0
  scale = max(float(np.max(np.abs(e))), 1e-6)
  err = float(np.max(np.abs(a - e))) / scale
  assert err <= tol, f"{what}: max abs error {err * scale:.3g} is {err:.3g} of the scale {scale:.3g} (> {tol})"
  return err
