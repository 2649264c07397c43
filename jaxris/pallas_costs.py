"""The work of the Pallas TPU kernels that XLA's cost model cannot see, read from a compiled module.

A Pallas kernel reaches XLA as a ``tpu_custom_call``; XLA costs it from the ``cost_estimate`` the
kernel was built with, and Pallas' flash attention gives one to its forward kernel only. Its two
backward kernels (``flash_mha_bwd_dkv``, ``flash_mha_bwd_dq``) carry none: XLA's ``cost_analysis()``
counts no FLOPs for them and its TPU cost model charges them their memory traffic alone (checked on a
v5p with 4 x 16 heads x 1152 tokens x 256 features: the backward added 241 us to the estimate, its
two kernels move 642 MB, 232 us at HBM bandwidth, while their 304 GFLOP take 663 us at peak). Those
two kernels do 3.5 times the forward's matmul work, so a long-sequence train step looked up to about
twice as fast in attention as it can be. `uncosted_kernels` finds such kernels in
``compiled.as_text()`` and gives each one's FLOPs from its operand shapes, for `jaxris.aot` to add.
"""

from __future__ import annotations

import dataclasses
import math
import re

_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "bf16": 2, "f16": 2, "s32": 4, "u32": 4,
                "f32": 4, "s64": 8, "u64": 8, "f64": 8}
_ARRAY = re.compile(r"\b(" + "|".join(_DTYPE_BYTES) + r")\[([\d,]*)\]")
# `%name = TYPE op(`: a type has no " word(" in it (tuple members follow ", ", layouts a ":").
_DEFINITION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (.*?) [a-z][\w\-]*\(")
_CUSTOM_CALL = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (.*?) custom-call\((.*?)\), custom_call_target=\"tpu_custom_call\"")


@dataclasses.dataclass(frozen=True)
class Kernel:
  name: str             # the custom call's instruction name (Pallas names it after the kernel)
  flops: float | None   # per execution; None for a kernel this module does not know
  bytes: int            # operands + results, per execution


def shapes(text: str) -> list[tuple[int, ...]]:
  """The array shapes in an HLO type, in order: 'f32[2,3]{1,0}' -> [(2, 3)]; tuples give several."""
  return [tuple(int(d) for d in dims.split(",") if d) for _, dims in _ARRAY.findall(text)]


def nbytes(text: str) -> int:
  return sum(_DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d)
             for dtype, dims in _ARRAY.findall(text))


def flash_backward_flops(name: str, q: tuple[int, ...], k: tuple[int, ...], v: tuple[int, ...]) -> float | None:
  """Matmul FLOPs of one Pallas flash-attention backward kernel, q [B, N, T, D], k [B, N, S, D],
  v [B, N, S, Dv]. Each kernel recomputes the logits q.k (2TSD per head) and dp = do.v (2TSDv); the
  dkv kernel adds dv = p.do (2TSDv) and dk = ds.q (2TSD), the dq kernel dq = ds.k (2TSD)."""
  (b, n, t, d), s, dv = q, k[2], v[3]
  if name.startswith("flash_mha_bwd_dkv"):
    return 4.0 * b * n * t * s * (d + dv)
  if name.startswith("flash_mha_bwd_dq"):
    return 2.0 * b * n * t * s * (2 * d + dv)
  return None


def uncosted_kernels(hlo_text: str) -> list[Kernel]:
  """Every Pallas TPU kernel of the compiled module without a cost estimate, once each: XLA's
  ``cost_analysis()`` counts a while loop's body once too (jaxris' TPU train steps have no loop
  around attention)."""
  lines = hlo_text.splitlines()
  defined = {m.group(1): m.group(2) for m in map(_DEFINITION.match, lines) if m}
  found = []
  for line in lines:
    m = _CUSTOM_CALL.match(line)
    if not m or "cost_estimate" in line:
      continue
    name, result = m.group(1), m.group(2)
    operands = [defined.get(o.split("*/")[-1].strip().lstrip("%"), "") for o in m.group(3).split(",")]
    arrays = [shapes(o) for o in operands[:3]]
    qkv = [a[0] for a in arrays if len(a) == 1]
    flops = flash_backward_flops(name, *qkv) if len(qkv) == 3 and len(qkv[0]) == 4 else None
    found.append(Kernel(name, flops, nbytes(result) + sum(nbytes(o) for o in operands)))
  return found
