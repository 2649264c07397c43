"""The work of the Pallas TPU kernels that XLA's cost model cannot see, read from a compiled module.

A Pallas kernel reaches XLA as a ``tpu_custom_call``; XLA costs it from the ``cost_estimate`` the
kernel was built with. jaxris' TPU attention kernels give none: its own grid kernel
(`jaxris.ops.grid_attention`: forward, backward) and Pallas' splash attention (forward, fused
backward); Pallas' flash attention gives one to its forward kernel only (its backward kernels
``flash_mha_bwd_dkv`` and ``flash_mha_bwd_dq`` carry none). jaxris' kernels go without on purpose,
so that every Pallas kernel is costed the same way: XLA's cost model charges a kernel with an
estimate its FLOPs' time *plus* its bytes' time (no overlap of DMA and compute; checked on a v5p:
the grid kernel's forward over 256 x 1152 tokens, 174 GFLOP and 0.91 GB, was charged 0.73 ms, the
sum of 0.38 and 0.33), and one without its bytes only, to which `jaxris.aot` adds the time its
FLOPs take beyond them: the slower of the two, as a kernel that overlaps its DMA with its matmuls
runs. For a kernel without an estimate XLA's ``cost_analysis()`` counts no FLOPs and its TPU cost
model charges its memory traffic alone (checked on a v5p with flash attention over 4 x 16 heads x 1152 tokens x 256 features: the backward
added 241 us to the estimate, its two kernels move 642 MB, 232 us at HBM bandwidth, while their
304 GFLOP take 663 us at peak), so a long-sequence train step looked up to about twice as fast in
attention as it can be. `uncosted_kernels` finds such kernels in ``compiled.as_text()`` and gives
each one's FLOPs from its operand shapes, for `jaxris.aot` to add.
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


def _lanes(d: int) -> int:
  """A head size as the MXU runs it: whole 128-lane passes (splash takes 80- or 144-wide heads as
  they are; Mosaic pads them in VMEM, so a pass costs the same as at 128 or 256)."""
  return -(-d // 128) * 128


def attention_kernel_flops(name: str, q: tuple[int, ...], k: tuple[int, ...], v: tuple[int, ...],
                           fused: bool = False) -> float | None:
  """Matmul FLOPs of one Pallas attention kernel that carries no cost estimate: q [..., T, D],
  k [..., S, D], v [..., S, Dv], leading axes (batch rows, heads) multiplied out.

  Every kernel computes or recomputes the logits q.k (2TSD per head). Forward (splash): + p.v
  (2TSDv). Backward dkv: + dp = do.v (2TSDv), dv = p.do (2TSDv), dk = ds.q (2TSD); a fused one
  (splash's `use_fused_bwd_kernel`) also dq = ds.k (2TSD). Backward dq: + dp and dq."""
  t, d = q[-2], _lanes(q[-1])
  s, dv = k[-2], _lanes(v[-1])
  pairs = 2.0 * math.prod(q[:-2]) * t * s
  if name.startswith(("splash_mha_fwd", "grid_attention_fwd")):
    return pairs * (d + dv)
  if name.startswith("grid_attention_bwd"):  # jaxris.ops.grid_attention: dq, dk, dv in one kernel
    return pairs * (3 * d + 2 * dv)
  if name.startswith(("flash_mha_bwd_dkv", "splash_mha_dkv")):
    return pairs * (2 * d + 2 * dv + (d if fused else 0))
  if name.startswith(("flash_mha_bwd_dq", "splash_mha_dq")):
    return pairs * (2 * d + dv)
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
    # q, k and v are the first three floating-point operands of rank 3 or more (splash passes its
    # block-mask tables, int8 and int32, ahead of them; flash passes q, k, v first).
    floats = [shapes(o)[0] for o in operands if re.match(r"(bf16|f16|f32)\[", o)]
    qkv = [shape for shape in floats if len(shape) >= 3][:3]
    # A fused backward writes dq (one partial per key block: an extra axis) beside dk and dv.
    fused = len(qkv) == 3 and any(len(r) == len(qkv[0]) + 1 for r in shapes(result))
    flops = attention_kernel_flops(name, *qkv, fused=fused) if len(qkv) == 3 else None
    found.append(Kernel(name, flops, nbytes(result) + sum(nbytes(o) for o in operands)))
  return found
