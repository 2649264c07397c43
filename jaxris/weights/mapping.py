"""Strict PyTorch -> Flax parameter conversion driven by a table of rules.

A rule maps a PyTorch state_dict key (a regular expression, matched in full) to a Flax
parameter path (a template that may use the regex groups, e.g. ``r"blocks.\\1.attn.qkv.kernel"``)
and names the transform applied to the tensor. Conversion is strict (DESIGN.md principle 7):
every source tensor is used exactly once or matched by an ``ignore`` pattern, every target
parameter is filled, and shapes must agree. All problems are collected and reported at once,
from names and shapes alone; tensors are transformed one at a time when read (streaming).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Mapping, Sequence

import numpy as np

from jaxris.weights import reader

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
  transform: Transform = identity  # a re-layout (transpose, reshape): it also runs on shape stand-ins


def prefixed(rules: Sequence[Rule], source_prefix: str, target_prefix: str) -> list[Rule]:
  """`rules` for a sub-model nested under `source_prefix` (PyTorch) / `target_prefix` (Flax)."""
  return [Rule(re.escape(source_prefix) + r.source, target_prefix + r.target, r.transform) for r in rules]


class ConversionError(ValueError):
  """Raised with every missing, unexpected and mis-shaped name listed."""


def _shape_after(transform: Transform, shape: tuple[int, ...], dtype) -> tuple[int, ...]:
  """The shape `transform` gives a tensor of `shape`, learnt on a zero-stride stand-in (no memory
  for re-layouts such as transposes, which is what every rule's transform is)."""
  return tuple(np.shape(transform(np.broadcast_to(np.zeros((), dtype), shape))))


def convert(
    source: Mapping[str, np.ndarray],
    rules: Sequence[Rule],
    target_shapes: Mapping[str, tuple[int, ...]],
    ignore: Sequence[str] = (),
    what: str = "checkpoint",
) -> reader.StateDict:
  """Applies `rules` to `source` and checks the result against `target_shapes`.

  Every check runs on names and shapes alone, before any tensor is read. The result is lazy: a
  parameter is read from `source` and transformed when asked for, so writing the parameters one
  by one (jaxris.weights.store.save) holds one tensor at a time; ``dict(result)`` holds them all.
  """
  source = reader.lazy(source)
  compiled = [(re.compile(r.source), r) for r in rules]
  ignored = [re.compile(p) for p in ignore]
  plan: dict[str, tuple[str, Transform]] = {}  # parameter -> (source key, transform)
  unexpected, duplicate, mis_shaped = [], [], []
  for key in source:
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
    if name in plan:
      duplicate.append(f"{key} and {plan[name][0]} both map to {name}")
      continue
    shape = _shape_after(rule.transform, source.shape(key), source.dtype(key))
    if shape != tuple(target_shapes[name]):
      mis_shaped.append(f"{key} {source.shape(key)} -> {name}: got {shape}, "
                        f"model expects {tuple(target_shapes[name])}")
      continue
    plan[name] = (key, rule.transform)
  missing = sorted(n for n in target_shapes if n not in plan and not any(n in m for m in mis_shaped))
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

  def load(name):
    key, transform = plan[name]
    return transform(source[key])

  specs = {name: (tuple(target_shapes[name]), source.dtype(key)) for name, (key, _) in plan.items()}
  return reader.StateDict(specs, load, source.where)
