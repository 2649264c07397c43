"""Strict PyTorch -> Flax parameter conversion driven by a table of rules.

A rule maps a PyTorch state_dict key (a regular expression, matched in full) to a Flax
parameter path (a template that may use the regex groups, e.g. ``r"blocks.\\1.attn.qkv.kernel"``)
and names the transform applied to the tensor. Conversion is strict (DESIGN.md principle 7):
every source tensor is used exactly once or matched by an ``ignore`` pattern, every target
parameter is filled, and shapes must agree. All problems are collected and reported at once.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Mapping, Sequence

import numpy as np

Transform = Callable[[np.ndarray], np.ndarray]


def identity(x: np.ndarray) -> np.ndarray:
  return x


def linear_kernel(x: np.ndarray) -> np.ndarray:
  """torch Linear weight (out, in) -> Flax kernel (in, out)."""
  return x.T


def conv_kernel(x: np.ndarray) -> np.ndarray:
  """torch Conv2d weight (out, in, kh, kw) -> Flax Conv kernel (kh, kw, in, out)."""
  return x.transpose(2, 3, 1, 0)


def conv_transpose_kernel(x: np.ndarray) -> np.ndarray:
  """torch ConvTranspose2d weight (in, out, kh, kw) -> our (in, kh, kw, out) layout."""
  return x.transpose(0, 2, 3, 1)


@dataclasses.dataclass(frozen=True)
class Rule:
  source: str            # regex over the PyTorch key, matched in full
  target: str            # Flax path template, may use \1, \2 ... from `source`
  transform: Transform = identity


def prefixed(rules: Sequence[Rule], source_prefix: str, target_prefix: str) -> list[Rule]:
  """`rules` for a sub-model nested under `source_prefix` (PyTorch) / `target_prefix` (Flax)."""
  return [Rule(re.escape(source_prefix) + r.source, target_prefix + r.target, r.transform) for r in rules]


class ConversionError(ValueError):
  """Raised with every missing, unexpected and mis-shaped name listed."""


def convert(
    source: Mapping[str, np.ndarray],
    rules: Sequence[Rule],
    target_shapes: Mapping[str, tuple[int, ...]],
    ignore: Sequence[str] = (),
    what: str = "checkpoint",
) -> dict[str, np.ndarray]:
  """Applies `rules` to `source` and checks the result against `target_shapes`."""
  compiled = [(re.compile(r.source), r) for r in rules]
  ignored = [re.compile(p) for p in ignore]
  out: dict[str, np.ndarray] = {}
  origin: dict[str, str] = {}
  unexpected, duplicate, mis_shaped = [], [], []
  for key, value in source.items():
    if any(p.fullmatch(key) for p in ignored):
      continue
    for pattern, rule in compiled:
      m = pattern.fullmatch(key)
      if m:
        name = m.expand(rule.target)
        break
    else:
      unexpected.append(key)
      continue
    if name not in target_shapes:
      unexpected.append(f"{key} (-> {name}, which the model does not have)")
      continue
    if name in out:
      duplicate.append(f"{key} and {origin[name]} both map to {name}")
      continue
    array = np.asarray(rule.transform(np.asarray(value)))
    if tuple(array.shape) != tuple(target_shapes[name]):
      mis_shaped.append(f"{key} {tuple(np.shape(value))} -> {name}: got {tuple(array.shape)}, "
                        f"model expects {tuple(target_shapes[name])}")
      continue
    out[name] = array
    origin[name] = key
  missing = sorted(n for n in target_shapes if n not in out and not any(n in m for m in mis_shaped))
  problems = []
  if missing:
    problems.append(f"{len(missing)} missing (model parameters no source tensor fills):\n  " +
                    "\n  ".join(missing))
  if unexpected:
    problems.append(f"{len(unexpected)} unexpected (source tensors nothing uses):\n  " +
                    "\n  ".join(sorted(unexpected)))
  if mis_shaped:
    problems.append(f"{len(mis_shaped)} with the wrong shape:\n  " + "\n  ".join(sorted(mis_shaped)))
  if duplicate:
    problems.append(f"{len(duplicate)} duplicated:\n  " + "\n  ".join(sorted(duplicate)))
  if problems:
    raise ConversionError(f"The {what} does not match the model:\n" + "\n".join(problems))
  return out
