"""SAM's attention over an image grid on TPU: a Pallas kernel that adds the decomposed relative
positions itself, forward and backward.

SAM's ViT adds rel_h[q, row(k)] + rel_w[q, col(k)] to every image query-key logit. Folded into the
dot product (`attention._fold_rel_pos_heads_major`, the splash path), that gives each head gh + gw
extra features on q and on every key: ViT-H's 80-wide heads become 144 wide, two MXU passes
instead of one for the logits, for dq and for dk, and XLA writes the widened q and k and their
gradients to memory. This kernel works with the keys on sublanes (logits [S, bq], as splash's dkv
kernel does) and the image keys row-major, each grid row padded to whole sublane tiles (gw -> gwp,
a multiple of 8), so the image keys' logits reshape for free to [gh, gwp, bq] and the two terms
are broadcast adds of rel_h [gh, 1, bq] and rel_w [1, gwp, bq]; their gradients are sums of the
logits' gradient over one axis or the other. The MXU runs the matmuls of attention without
relative positions (forward 2, backward 5) at the heads' own widths. The terms themselves
(q against the tables, [gh + gwp, L] per head) are computed by XLA, queries on the last axis.

All keys of a sequence sit in one block (up to `MAX_KEYS`), so the backward recomputes the
softmax exactly from the logits (no log-sum-exp carried from the forward) and writes dq once.
Short sequences (SAM's 14x14 windows: 14 x 16 = 224 tokens) go up to 8 at a time per grid step.
Like splash's, neither kernel carries a cost estimate: `jaxris.pallas_costs` gives XLA's cost model
their FLOPs (their MXU work in whole 128-lane passes), so that every Pallas kernel is costed alike.

Layout, per sequence of ``length`` tokens: zeros up to a whole sublane tile, the ``num_prefix``
prefix tokens (DIT's text slots: no relative-position term), the image rows of gwp columns (those
>= gw padding), zeros. The kernel masks the padding tokens before and after; padding columns are
masked through rel_w (its rows >= gw hold MASKED); padding queries give rows that are sliced off.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

NN = (((1,), (0,)), ((), ()))  # [m, k] @ [k, n]
NT = (((1,), (1,)), ((), ()))  # [m, k] @ [n, k]^T
MASKED = -1e30                 # a logit that exp() sends to 0 and that stays finite in bf16

# One sequence's keys live in VMEM whole: at 4096 + 128 keys and 128 queries per step the backward
# holds about 20 MiB (logits, probabilities and their gradient in f32, k, v and dk, dv accumulators).
MAX_KEYS = 4224
_VMEM_LIMIT = 64 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where a sequence's tokens sit (see the module docstring)."""
  gh: int          # image rows
  gw: int          # image columns
  num_prefix: int  # prefix tokens ahead of the image tokens
  length: int      # padded sequence length: whole blocks of `block_q`
  block_q: int     # queries per grid step (lanes: a multiple of 128, or the whole length)
  group: int       # sequences per grid step

  @property
  def gwp(self) -> int:
    return -(-self.gw // 8) * 8

  @property
  def start(self) -> int:
    """The first image token: the prefix, padded at its front to whole sublane tiles."""
    return -(-self.num_prefix // 8) * 8

  @property
  def image(self) -> int:
    return self.gh * self.gwp


def layout(gh: int, gw: int, num_prefix: int) -> Layout | None:
  """The layout of `num_prefix` + gh x gw image tokens, or None when the keys do not fit one block.
  A short sequence (a window) is one block of queries, `with_group` sequences per grid step; a long
  one is split into blocks of 384, 256 or 128 queries, at most 2**19 logits (2 MiB) per step."""
  used = -(-num_prefix // 8) * 8 + gh * (-(-gw // 8) * 8)
  if used <= 512:
    return Layout(gh, gw, num_prefix, used, used, 1)
  length = -(-used // 128) * 128
  if length > MAX_KEYS:
    return None
  block_q = next(b for b in (384, 256, 128) if length % b == 0 and length * b <= 2 ** 19)
  return Layout(gh, gw, num_prefix, length, block_q, 1)


def with_group(lay: Layout, sequences: int) -> Layout:
  """`lay` taking up to 8 short sequences per grid step (a divisor of `sequences`): a window's
  [224, 224] logits are too little work for one step of the grid."""
  if lay.block_q != lay.length:
    return lay
  return dataclasses.replace(lay, group=next(g for g in (8, 4, 2, 1) if sequences % g == 0))


def _mask_rows(s, first: int, stop: int):
  """s with its rows outside [first, stop) masked (padding keys)."""
  row = lax.broadcasted_iota(jnp.int32, s.shape, 0)
  return jnp.where((row >= first) & (row < stop), s, MASKED)


def _logits(q, k, rel_h, rel_w, lay: Layout):
  """[S, bq] float32 logits, keys on sublanes: k q^T + rel_h[row(k)] + rel_w[col(k)], padding masked."""
  s = lax.dot_general(k, q, NT, preferred_element_type=jnp.float32)
  bq = s.shape[1]
  a, b = lay.start, lay.start + lay.image
  img = s[a:b].reshape(lay.gh, lay.gwp, bq)
  img = img + rel_h.astype(jnp.float32)[:, None, :] + rel_w.astype(jnp.float32)[None, :, :]
  parts = [img.reshape(lay.image, bq)]
  if a:
    parts.insert(0, _mask_rows(s[:a], a - lay.num_prefix, a) if a > lay.num_prefix else s[:a])
  if lay.length > b:
    parts.append(jnp.full_like(s[b:], MASKED))
  return jnp.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]


def _probabilities(q, k, rel_h, rel_w, lay):
  s = _logits(q, k, rel_h, rel_w, lay)
  e = jnp.exp(s - s.max(axis=0, keepdims=True))
  return e * (1.0 / e.sum(axis=0, keepdims=True))


def _forward_kernel(q_ref, k_ref, v_ref, rh_ref, rw_ref, o_ref, *, lay: Layout):
  for g in range(lay.group):
    p = _probabilities(q_ref[g], k_ref[g], rh_ref[g], rw_ref[g], lay)
    v = v_ref[g]
    o_ref[g] = lax.dot_general(p.T.astype(v.dtype), v, NN, preferred_element_type=jnp.float32).astype(o_ref.dtype)


def _backward_kernel(q_ref, k_ref, v_ref, rh_ref, rw_ref, do_ref,
                     dq_ref, dk_ref, dv_ref, drh_ref, drw_ref, dk_acc, dv_acc, *, lay: Layout):
  step = pl.program_id(1)

  @pl.when(step == 0)
  def _():
    dk_acc[...] = jnp.zeros_like(dk_acc)
    dv_acc[...] = jnp.zeros_like(dv_acc)

  for g in range(lay.group):
    q, k, v, do = q_ref[g], k_ref[g], v_ref[g], do_ref[g]
    p = _probabilities(q, k, rh_ref[g], rw_ref[g], lay)
    dv_acc[g] += lax.dot_general(p.astype(do.dtype), do, NN, preferred_element_type=jnp.float32)
    dp = lax.dot_general(v, do, NT, preferred_element_type=jnp.float32)
    ds = p * (dp - (p * dp).sum(axis=0, keepdims=True))  # all keys here: the softmax's exact backward
    dk_acc[g] += lax.dot_general(ds.astype(q.dtype), q, NN, preferred_element_type=jnp.float32)
    dq_ref[g] = lax.dot_general(ds.T.astype(k.dtype), k, NN, preferred_element_type=jnp.float32).astype(dq_ref.dtype)
    img = ds[lay.start:lay.start + lay.image].reshape(lay.gh, lay.gwp, ds.shape[1])
    drh_ref[g] = img.sum(axis=1).astype(drh_ref.dtype)
    drw_ref[g] = img.sum(axis=0).astype(drw_ref.dtype)

  @pl.when(step == pl.num_programs(1) - 1)
  def _():
    dk_ref[...] = dk_acc[...].astype(dk_ref.dtype)
    dv_ref[...] = dv_acc[...].astype(dv_ref.dtype)


def _specs(lay: Layout):
  g, bq, s = lay.group, lay.block_q, lay.length
  per_query = lambda width: pl.BlockSpec((g, bq, width), lambda i, j: (i, j, 0))
  per_key = lambda width: pl.BlockSpec((g, s, width), lambda i, j: (i, 0, 0))
  per_query_rel = lambda rows: pl.BlockSpec((g, rows, bq), lambda i, j: (i, 0, j))
  return per_query, per_key, per_query_rel


def _params(*semantics):
  return pltpu.CompilerParams(dimension_semantics=semantics, vmem_limit_bytes=_VMEM_LIMIT)


def _forward(q, k, v, rel_h, rel_w, lay: Layout, interpret: bool):
  n, _, d = q.shape
  dv = v.shape[2]
  per_query, per_key, per_query_rel = _specs(lay)
  out = jax.ShapeDtypeStruct((n, lay.length, dv), v.dtype)
  return pl.pallas_call(
      functools.partial(_forward_kernel, lay=lay), out_shape=out,
      grid=(n // lay.group, lay.length // lay.block_q),
      in_specs=[per_query(d), per_key(d), per_key(dv), per_query_rel(lay.gh), per_query_rel(lay.gwp)],
      out_specs=per_query(dv), compiler_params=_params("parallel", "parallel"),
      name="grid_attention_fwd", interpret=interpret)(q, k, v, rel_h, rel_w)


def _backward(q, k, v, rel_h, rel_w, do, lay: Layout, interpret: bool):
  n, _, d = q.shape
  dv = v.shape[2]
  per_query, per_key, per_query_rel = _specs(lay)
  outs = (jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct(k.shape, k.dtype),
          jax.ShapeDtypeStruct(v.shape, v.dtype), jax.ShapeDtypeStruct(rel_h.shape, rel_h.dtype),
          jax.ShapeDtypeStruct(rel_w.shape, rel_w.dtype))
  return pl.pallas_call(
      functools.partial(_backward_kernel, lay=lay), out_shape=outs,
      grid=(n // lay.group, lay.length // lay.block_q),
      in_specs=[per_query(d), per_key(d), per_key(dv), per_query_rel(lay.gh), per_query_rel(lay.gwp),
                per_query(dv)],
      out_specs=[per_query(d), per_key(d), per_key(dv), per_query_rel(lay.gh), per_query_rel(lay.gwp)],
      scratch_shapes=[pltpu.VMEM((lay.group, lay.length, d), jnp.float32),
                      pltpu.VMEM((lay.group, lay.length, dv), jnp.float32)],
      compiler_params=_params("parallel", "arbitrary"),
      name="grid_attention_bwd", interpret=interpret)(q, k, v, rel_h, rel_w, do)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def kernel_attention(q, k, v, rel_h, rel_w, lay: Layout, interpret: bool = False):
  """softmax(k q^T + rel_h + rel_w over keys) v for sequences in `lay`'s layout: q [n, L, d] (scaled),
  k [n, L, d], v [n, L, dv], rel_h [n, gh, L], rel_w [n, gwp, L] (per query, queries on lanes)."""
  return _forward(q, k, v, rel_h, rel_w, lay, interpret)


def _kernel_attention_fwd(q, k, v, rel_h, rel_w, lay, interpret):
  return _forward(q, k, v, rel_h, rel_w, lay, interpret), (q, k, v, rel_h, rel_w)


def _kernel_attention_bwd(lay, interpret, residuals, do):
  return _backward(*residuals, do, lay, interpret)


kernel_attention.defvjp(_kernel_attention_fwd, _kernel_attention_bwd)


def to_sequences(x, lay: Layout):
  """[B, P + gh*gw, N, c] (prefix first, as the models order tokens) -> heads-major [B, N, L, c] in
  `lay`'s order: zeros up to whole sublane tiles, the prefix, the image rows padded to gwp
  columns, zeros. Where the columns need no padding this is one pad and one transpose."""
  b, _, n, c = x.shape
  p = lay.num_prefix
  head = ((0, 0), (lay.start - p, 0), (0, 0), (0, 0))
  if lay.gwp == lay.gw:
    seq = jnp.pad(x, ((0, 0), (lay.start - p, lay.length - lay.start - lay.image), (0, 0), (0, 0)))
  else:
    img = x[:, p:].reshape(b, lay.gh, lay.gw, n, c)
    img = jnp.pad(img, ((0, 0), (0, 0), (0, lay.gwp - lay.gw), (0, 0), (0, 0))).reshape(b, lay.image, n, c)
    seq = jnp.concatenate([jnp.pad(x[:, :p], head), img], axis=1) if lay.start else img
    seq = jnp.pad(seq, ((0, 0), (0, lay.length - lay.start - lay.image), (0, 0), (0, 0)))
  return seq.transpose(0, 2, 1, 3)


def from_sequences(y, lay: Layout):
  """Inverse of `to_sequences`: [B, N, L, c] -> [B, P + gh*gw, N, c]."""
  b, n, _, c = y.shape
  y = y.transpose(0, 2, 1, 3)
  a = lay.start
  if lay.gwp == lay.gw:
    return y[:, a - lay.num_prefix:a + lay.image]
  img = y[:, a:a + lay.image].reshape(b, lay.gh, lay.gwp, n, c)[:, :, :lay.gw].reshape(b, lay.gh * lay.gw, n, c)
  return jnp.concatenate([y[:, a - lay.num_prefix:a], img], axis=1) if lay.num_prefix else img


def per_query_tables(r_h, r_w):
  """SAM's tables r_h [gh, gh, d] and r_w [gw, gw, d] (indexed per query and key row / column) laid
  out per (query row, query column): [gh, gw, gh + gw, d], so that both terms of every image query
  come from one batched dot."""
  gh, gw, d = r_h.shape[0], r_w.shape[0], r_h.shape[-1]
  return jnp.concatenate([jnp.broadcast_to(r_h[:, None], (gh, gw, gh, d)),
                          jnp.broadcast_to(r_w[None], (gh, gw, gw, d))], axis=2)


def relative_terms(q_seq, r_h, r_w, lay: Layout):
  """rel_h [B, N, gh, L] and rel_w [B, N, gwp, L] of heads-major, unscaled queries in `lay`'s order
  (`to_sequences`): the official term, each query against the tables already indexed per (query,
  key) row/column, queries on the last axis; zero for prefix and padding queries; rel_w's rows
  of padding columns hold MASKED, so that no query sees a padding column. Both come from one
  batched dot against the tables laid out per (query row, query column), [gh, gw, gh + gw, d]: on a
  v5p, ViT-H's global block (forward + backward) takes 9.04 ms, against 9.70 ms with one dot per
  table."""
  b, n, _, d = q_seq.shape
  gh, gw, a = lay.gh, lay.gw, lay.start
  q_img = q_seq[:, :, a:a + lay.image].reshape(b, n, gh, lay.gwp, d)[:, :, :, :gw]
  table = per_query_tables(r_h, r_w).astype(q_seq.dtype)
  terms = jnp.einsum("bnhwc,hwkc->bnkhw", q_img, table)  # [B, N, gh + gw, gh, gw]
  terms = jnp.pad(terms, ((0, 0),) * 4 + ((0, lay.gwp - gw),)).reshape(b, n, gh + gw, lay.image)
  terms = jnp.pad(terms, ((0, 0), (0, 0), (0, 0), (a, lay.length - a - lay.image)))
  rel_w = jnp.pad(terms[:, :, gh:], ((0, 0), (0, 0), (0, lay.gwp - gw), (0, 0)), constant_values=MASKED)
  return terms[:, :, :gh], rel_w


def windows_to_sequences(qkv, num_heads: int, window: int, lay: Layout):
  """SAM's windowed blocks: qkv [B, Hp, Wp, 3C] over a grid of whole windows (q, k, v, each heads x d)
  -> q, k, v [B * nWindows, N, L, d] in `lay`'s order (a window's rows padded to gwp columns), the
  windows cut out, padded and made heads-major, one transpose each. One transpose of the three
  stacked costs more: XLA then copies each of q, k and v once more into the kernel's layout (on a
  v5p, a SAM-H windowed block's forward at 1024 px, 2 images, XLA's estimate with MSA off: 1.48 ms,
  against 1.59 ms stacked; `LIBTPU_INIT_ARGS=--xla_msa_enable=false python benchmarks/tpu_block.py
  --window 14 --grid 64 --images 2 --forward-only`)."""
  b, hp, wp, c3 = qkv.shape
  nh, nw, d = hp // window, wp // window, c3 // 3 // num_heads
  x = qkv.reshape(b, nh, window, nw, window, 3, num_heads, d)
  x = jnp.pad(x, ((0, 0),) * 4 + ((0, lay.gwp - window),) + ((0, 0),) * 3)
  heads_major = lambda i: x[:, :, :, :, :, i].transpose(0, 1, 3, 5, 2, 4, 6).reshape(
      b * nh * nw, num_heads, lay.length, d)
  return heads_major(0), heads_major(1), heads_major(2)


def sequences_to_windows(y, grid: tuple[int, int, int], window: int, lay: Layout):
  """Inverse of `windows_to_sequences` for the output: [B * nWindows, N, L, d] -> [B, Hp, Wp, N * d]."""
  b, hp, wp = grid
  n, d = y.shape[1], y.shape[3]
  y = y.reshape(b, hp // window, wp // window, n, window, lay.gwp, d)[:, :, :, :, :, :window]
  return y.transpose(0, 1, 4, 2, 5, 3, 6).reshape(b, hp, wp, n * d)
