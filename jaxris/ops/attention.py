"""Multi-head attention behind one switch: a cache-sized CPU kernel, or XLA's fused attention.

  out = attention(q, k, v, scale=d**-0.5, bias=..., key_mask=..., rel_pos=RelPos(r_h, r_w, grid),
                  dropout=...)          # q [B, T, N, d], k [B, S, N, d], v [B, S, N, dv] -> [B, T, N, dv]

Every model here (SAM's ViT and two-way transformer, TinyViT, BERT, BEiT-3, the DIT slots'
cross-attention) calls this one function. Two paths compute the same softmax(scale q k^T + bias) v:

* ``cpu``: the kernel tuned on a 2-core CPU. Long sequences with SAM's decomposed
  relative-position term (the ViT) run a cache-sized step at a time (``lax.map`` over blocks of
  queries, each step's logits within ``_STEP_LOGITS``), heads-major so that XLA's CPU dots take
  their operands without copies; short ones are one einsum softmax, normalised after the second
  dot. On an accelerator the steps would serialise attention into tiny kernels.
* ``xla``: ``jax.nn.dot_product_attention`` (implementation None: XLA's attention, the default on
  GPU; ``cudnn`` asks for cuDNN's flash attention). ``pallas`` (the default on TPU): Pallas' TPU
  flash attention for sequences of 512 tokens or more without bias or mask (DIT's and SAM's
  global blocks), run per device under shard_map; XLA's attention for the rest. The decomposed
  relative-position term of SAM's ViT is folded into the dot product instead of a bias, exactly:
  rel_h[q, kh] + rel_w[q, kw] = [rel_h[q], rel_w[q]] . [onehot(kh), onehot(kw)], so each query gets
  gh + gw extra features and each image key the matching one-hots (prefix tokens get zeros), and no
  [T, S] bias is ever formed (at 512 px with 64-dim heads: 64 + 32 + 32 = 128 features, one MXU
  pass). Attention-weight dropout (BERT and the DIT cross-attention in training) has no place in
  dot_product_attention: then both paths run the einsum softmax.

The path is ``auto`` by default: ``cpu`` on the CPU backend, ``pallas`` on TPU, ``xla`` on GPU.
``JAXRIS_ATTENTION=cpu|xla|cudnn|pallas|auto`` or ``with attention.use("xla"):`` override it (the
context manager wins); ``jaxris.aot`` forces the TPU's choice, since it compiles for TPUs on a CPU
host. The path is read when a function is traced: a jitted function keeps the path it was traced with.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

PATHS = ("cpu", "xla", "cudnn", "pallas")
_AUTO = {"cpu": "cpu", "tpu": "pallas"}  # backend -> path; any other (GPU): xla
_forced: list[str] = []


def path() -> str:
  """The attention path the next trace takes: 'cpu', 'xla' or 'cudnn'."""
  if _forced:
    return _forced[-1]
  env = os.environ.get("JAXRIS_ATTENTION", "auto").strip().lower() or "auto"
  if env == "auto":
    return _AUTO.get(jax.default_backend(), "xla")
  if env not in PATHS:
    raise ValueError(f"JAXRIS_ATTENTION={env!r}: expected one of auto, {', '.join(PATHS)}")
  return env


@contextlib.contextmanager
def use(name: str):
  """``with use("xla"):`` traces attention on that path (tests force the accelerator path on CPU)."""
  if name == "auto":
    name = _AUTO.get(jax.default_backend(), "xla")
  if name not in PATHS:
    raise ValueError(f"unknown attention path {name!r}: expected auto or one of {PATHS}")
  _forced.append(name)
  try:
    yield
  finally:
    _forced.pop()


class RelPos(NamedTuple):
  """SAM's decomposed relative positions over the last gh*gw tokens (the image grid, row-major).

  r_h [gh, gh, d] and r_w [gw, gw, d] are the tables already indexed per (query, key) row/column
  (``image_encoder.rel_pos_table``); the term uses the *unscaled* query, as the official code
  does, and touches only the image-image block: the first ``num_prefix`` tokens get none.
  """
  r_h: jax.Array
  r_w: jax.Array
  num_prefix: int = 0


def attention(q, k, v, *, scale: float, bias=None, key_mask=None, rel_pos: RelPos | None = None,
              dropout: Callable | None = None, impl: str | None = None):
  """softmax(scale q.k + bias [+ rel_pos], masked keys excluded) v, per head.

  q [B, T, N, d], k [B, S, N, d], v [B, S, N, dv] -> [B, T, N, dv] in v's dtype. ``bias``
  broadcasts to [B, N, T, S]; ``key_mask`` [B, S] is True for keys to attend to (a row without
  any attends uniformly, as transformers' most-negative-float mask does); ``dropout`` maps the
  [B, N, T, S] attention weights in training. Logits, softmax and accumulation are float32.
  ``impl`` overrides `path()`.
  """
  impl = impl or path()
  if impl == "cpu" or dropout is not None:
    if rel_pos is not None and bias is None and key_mask is None and dropout is None:
      return _cpu_grid_attention(q, k, v, scale, rel_pos)
    if rel_pos is not None:
      q, k, v, scale = *_fold_rel_pos(q, k, v, scale, rel_pos), 1.0
    return _einsum_attention(q, k, v, scale, bias, key_mask, dropout)
  if rel_pos is not None:
    q, k, v, scale = *_fold_rel_pos(q, k, v, scale, rel_pos), 1.0
  mask = None if key_mask is None else key_mask.astype(bool)[:, None, None, :]
  if bias is not None:
    bias = jnp.asarray(bias)
    bias = bias.reshape((1,) * (4 - bias.ndim) + bias.shape)
  dv = v.shape[-1]
  if impl == "cudnn" and q.dtype in (jnp.bfloat16, jnp.float16):
    # cuDNN wants one head size for q, k and v (a multiple of 8): zero features change nothing.
    width = -(-max(q.shape[-1], dv) // 8) * 8
    pad = lambda t: jnp.pad(t, ((0, 0),) * 3 + ((0, width - t.shape[-1]),))
    out = jax.nn.dot_product_attention(pad(q), pad(k), pad(v), bias, mask, scale=scale, implementation="cudnn")
    return out[..., :dv]
  if impl == "pallas" and bias is None and mask is None and min(q.shape[1], k.shape[1]) >= _PALLAS_MIN_TOKENS:
    return _sharded_over_batch(functools.partial(_pallas_tpu_attention, scale=scale), q, k, v)
  if q.shape[-1] != dv:  # dot_product_attention wants one head size: its XLA formula, written out
    return _xla_core(q, k, v, scale, bias, mask)
  return jax.nn.dot_product_attention(q, k, v, bias, mask, scale=scale)


# Shorter sequences (SAM's 14x14 windows, BERT's 20 tokens) have small logits, and padding them to
# 128-token blocks would cost more than it saves: they take XLA's attention. So do long queries over
# a few keys and the reverse (SAM's decoder: 4096 image tokens attending to ~7 prompt tokens, whose
# keys Pallas would pad to 128).
_PALLAS_MIN_TOKENS = 512


def _sharded_over_batch(f, q, k, v):
  """f(q, k, v) per device when a mesh is set: a Pallas kernel is opaque to XLA's partitioner,
  which would gather its operands onto every device; under shard_map each device runs it on its
  own batch rows (and heads, where activations are split over the `tensor` axis)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return f(q, k, v)
  size = lambda names: int(np.prod([mesh.shape[a] for a in names]))
  batch = tuple(a for a in ("data", "fsdp") if a in mesh.axis_names and mesh.shape[a] > 1)
  heads = "tensor" if "tensor" in mesh.axis_names and q.shape[2] % mesh.shape["tensor"] == 0 else None
  if batch and q.shape[0] % size(batch):
    batch = ()
  spec = jax.sharding.PartitionSpec(batch or None, None, heads, None)
  return jax.shard_map(f, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec, check_vma=False)(q, k, v)


def _pallas_tpu_attention(q, k, v, scale):
  """Pallas' TPU flash attention (jax.experimental.pallas.ops.tpu.flash_attention): the [T, S]
  logits stay in VMEM, forward and backward. Tokens are padded to whole 128-blocks (padding keys
  in their own segment, so no real query sees them) and head features to a multiple of 128."""
  from jax.experimental.pallas.ops.tpu import flash_attention as fa
  b, t, n, d = q.shape
  s, dv = k.shape[1], v.shape[-1]
  up = lambda x: -(-x // 128) * 128
  width, tp, sp = up(max(d, dv)), up(t), up(s)

  def prep(x, length):
    x = jnp.pad(x, ((0, 0), (0, length - x.shape[1]), (0, 0), (0, width - x.shape[-1])))
    return x.transpose(0, 2, 1, 3)  # [B, N, T, D]
  segments = None
  if tp != t or sp != s:
    seg = lambda length, real: jnp.broadcast_to((jnp.arange(length) >= real).astype(jnp.int32), (b, length))
    segments = fa.SegmentIds(q=seg(tp, t), kv=seg(sp, s))
  # (Mosaic refuses jax_default_matmul_precision="highest" with bf16 operands, forward and backward.)
  out = fa.flash_attention(prep(q, tp), prep(k, sp), prep(v, sp), segment_ids=segments, sm_scale=scale)
  return out.transpose(0, 2, 1, 3)[:, :t, :, :dv]


def _xla_core(q, k, v, scale, bias, mask):
  """jax.nn.dot_product_attention's XLA implementation, for a value head size unlike the key's."""
  logits = jnp.einsum("btnh,bsnh->bnts", q, k, preferred_element_type=jnp.float32) * scale
  if bias is not None:
    logits = logits + bias.astype(jnp.float32)
  if mask is not None:
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum("bnts,bsnh->btnh", probs, v)


def _fold_rel_pos(q, k, v, scale, rel: RelPos):
  """(q', k', v) with q'.k' = scale q.k + rel_h[q, kh(k)] + rel_w[q, kw(k)] on the image block."""
  b, t, n, d = q.shape
  p = rel.num_prefix
  gh, gw = rel.r_h.shape[0], rel.r_w.shape[0]
  q_img = q[:, p:].reshape(b, gh, gw, n, d)
  rel_h = jnp.einsum("bhwnc,hkc->bhwnk", q_img, rel.r_h.astype(q.dtype))
  rel_w = jnp.einsum("bhwnc,wkc->bhwnk", q_img, rel.r_w.astype(q.dtype))
  q_extra = jnp.concatenate([rel_h, rel_w], axis=-1).reshape(b, gh * gw, n, gh + gw)
  onehot = np.zeros((k.shape[1], gh + gw), np.float32)
  rows, cols = np.divmod(np.arange(gh * gw), gw)
  onehot[p + np.arange(gh * gw), rows] = 1.0
  onehot[p + np.arange(gh * gw), gh + cols] = 1.0
  if p:
    q_extra = jnp.pad(q_extra, ((0, 0), (p, 0), (0, 0), (0, 0)))
  k_extra = jnp.broadcast_to(jnp.asarray(onehot, k.dtype)[None, :, None, :], (*k.shape[:3], gh + gw))
  q = jnp.concatenate([q * jnp.asarray(scale, q.dtype), q_extra.astype(q.dtype)], axis=-1)
  return q, jnp.concatenate([k, k_extra], axis=-1), v


def _einsum_attention(q, k, v, scale, bias, key_mask, dropout):
  """One softmax over all logits, heads-major, normalised after the second dot (dividing the
  [T, dv] output instead of the [T, S] weights saves a pass; the same up to rounding, ~1e-7)."""
  heads_major = lambda t: t.transpose(0, 2, 1, 3)
  q, k, v = heads_major(q), heads_major(k), heads_major(v)
  logits = jnp.einsum("bnqd,bnkd->bnqk", q, k, preferred_element_type=jnp.float32) * scale
  if bias is not None:
    logits = logits + jnp.asarray(bias).astype(jnp.float32)
  if key_mask is not None:
    logits = jnp.where(key_mask.astype(bool)[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
  e = jnp.exp(logits - jax.lax.stop_gradient(logits.max(axis=-1, keepdims=True)))
  total = e.sum(axis=-1, keepdims=True)
  if dropout is not None:  # dropout(e) / sum(e) = dropout(e / sum(e)): it scales elementwise
    e = dropout(e)
  out = jnp.einsum("bnqk,bnkd->bnqd", e.astype(v.dtype), v, preferred_element_type=jnp.float32) / total
  return heads_major(out.astype(v.dtype))


# --- The CPU kernel of SAM's ViT: attention with decomposed relative positions, a step at a time.

# Attention is computed a step at a time (see _chunked_attention), each step holding at most this
# many logits: 2**19 fp32 = 2 MiB, which stays in cache through the dot -> bias -> softmax -> dot
# chain that XLA's CPU backend fuses into two library calls per step. Measured on the loaded
# 2-core CPU, one ViT-B global block at 1024 px (4096 tokens): with all [12, 4096, 4096] logits
# at once the block cost 5.5 s of CPU, 2.6 s of it system time for ~1 M page faults per call (the
# 805 MB logits and XLA's internal copies are fresh allocations every call); the attention alone
# costs 0.9-1.0 s of CPU in steps of 128 queries x 1 head, 1.2-1.3 s in steps of 64 queries x 12
# heads (12 MiB) and 2.1 s in steps of 1024 queries x 1 head (16 MiB). Between 2**17 and 2**21
# the whole block's time was the same within the noise (+-5%).
_STEP_LOGITS = 1 << 19


def _cpu_grid_attention(q, k, v, scale, rel: RelPos):
  b, n, heads, d = q.shape
  # Heads-major [B*heads, n, d]: every dot below then has its batch dimension first and its
  # contracting dimension last, the layout XLA's CPU dot takes without copying (token-major
  # einsums "bqnd,bknd->bnqk" made XLA copy the 805 MB weights of a 1024 px global block once
  # more before the second dot, and kept the two dots apart).
  q, k, v = (t.transpose(0, 2, 1, 3).reshape(b * heads, n, t.shape[-1]) for t in (q, k, v))
  gh, gw = rel.r_h.shape[0], rel.r_w.shape[0]
  r_h, r_w = rel.r_h.astype(q.dtype), rel.r_w.astype(q.dtype)
  num_prefix = rel.num_prefix
  terms = tables = None
  rows = _step_shape(b * heads, n, n)[1]
  if not num_prefix and rows % gw == 0 and n % rows == 0:
    tables = (r_h, r_w)  # steps hold whole grid rows: each computes its own terms
  else:
    q_img = q[:, num_prefix:].reshape(b * heads, gh, gw, d)
    terms = _rel_terms(q_img, r_h, r_w)
    if num_prefix:  # prefix queries get no relative-position term
      terms = tuple(jnp.pad(t, ((0, 0), (num_prefix, 0), (0, 0))) for t in terms)
  out = _chunked_attention(q, k, v, scale, num_prefix, terms, tables)
  return out.reshape(b, heads, n, v.shape[-1]).transpose(0, 2, 1, 3)


def _rel_terms(q, r_h, r_w):
  """rel_h [S, h*w, kh] and rel_w [S, h*w, kw] of unscaled queries q [S, h, w, d] (official order)."""
  s, h, w, _ = q.shape
  rel_h = jnp.einsum("shwc,hkc->shwk", q, r_h).reshape(s, h * w, r_h.shape[1])
  rel_w = jnp.einsum("shwc,wkc->shwk", q, r_w).reshape(s, h * w, r_w.shape[1])
  return rel_h, rel_w


def _step_shape(seqs: int, nq: int, nk: int) -> tuple[int, int]:
  """(sequences, queries) per attention step: the most whole sequences, else the fewest equal
  blocks of queries, that keep a step's logits within _STEP_LOGITS."""
  if nq * nk > _STEP_LOGITS:
    blocks = -(-nq // max(8, _STEP_LOGITS // nk))
    return 1, -(-nq // blocks)  # e.g. DIT's 20 + 32*32 tokens: 3 blocks of 348, no padding
  fit = max(1, _STEP_LOGITS // (nq * nk))
  return max(g for g in range(1, min(fit, seqs) + 1) if seqs % g == 0), nq


def _chunked_attention(q, k, v, scale, num_prefix, terms=None, tables=None):
  """softmax(scale q k^T + rel_h + rel_w) v over [S, n, d] sequences, a cache-sized step at a time.

  The decomposed relative-position terms of the last kh*kw keys come either as ``terms`` (rel_h
  [S, n, kh], rel_w [S, n, kw], computed beforehand) or as ``tables`` (r_h [kh, kh, d], r_w
  [kw, kw, d]), when every step holds whole rows of the grid and can compute its own terms. Steps
  run in a ``lax.map`` loop over groups of whole sequences (windows x heads) and, within a long
  sequence, over blocks of queries.
  """
  s, nq, d = q.shape
  group, rows = _step_shape(s, nq, k.shape[1])
  pad = (-nq) % rows  # query blocks of a long sequence: pad the queries, drop their outputs
  blocks = (nq + pad) // rows
  rel_h, rel_w = terms if terms is not None else (None, None)
  # With tables, a step's rel_h terms need only the r_h rows of its own queries.
  r_h = None if tables is None else tables[0].reshape(blocks, -1, *tables[0].shape[1:])

  def step(q, k, v, rel_h, rel_w, r_h):
    if tables is not None:
      # Computed outside the loop, these einsums made XLA transpose all of q twice in memory
      # (12 of the 122 ms of a 512 px windowed block); here they read cache-resident queries.
      rel_h, rel_w = _rel_terms(q.reshape(q.shape[0], r_h.shape[0], -1, d), r_h, tables[1])
    return _attention_step(q * scale, k, v, rel_h, rel_w, num_prefix)

  def one_group(xs):
    qg, kg, vg, rhg, rwg = xs
    pad_q = lambda t: jnp.pad(t, ((0, 0), (0, pad), (0, 0))) if pad else t
    split = lambda t: None if t is None else pad_q(t).reshape(group, blocks, rows, t.shape[-1]).swapaxes(0, 1)
    out = jax.lax.map(lambda ys: step(ys[0], kg, vg, *ys[1:]), (split(qg), split(rhg), split(rwg), r_h))
    return out.swapaxes(0, 1).reshape(group, blocks * rows, v.shape[-1])

  regroup = lambda t: None if t is None else t.reshape(s // group, group, *t.shape[1:])
  out = jax.lax.map(one_group, tuple(regroup(t) for t in (q, k, v, rel_h, rel_w)))
  return out.reshape(s, blocks * rows, v.shape[-1])[:, :nq]


def _attention_step(q, k, v, rel_h, rel_w, num_prefix):
  logits = jnp.einsum("sqd,skd->sqk", q, k)
  if rel_h is not None:
    g, n = logits.shape[:2]
    kh, kw = rel_h.shape[-1], rel_w.shape[-1]
    img = logits[..., num_prefix:].reshape(g, n, kh, kw) + rel_h[..., :, None] + rel_w[..., None, :]
    img = img.reshape(g, n, kh * kw)
    logits = jnp.concatenate([logits[..., :num_prefix], img], axis=-1) if num_prefix else img
  # Softmax normalised after the second dot: dividing the [q, d] output instead of the [q, k]
  # weights saves a pass over the logits (same result up to rounding, ~1e-7 relative).
  logits = logits.astype(jnp.float32)
  e = jnp.exp(logits - jax.lax.stop_gradient(logits.max(axis=-1, keepdims=True)))
  out = jnp.einsum("sqk,skd->sqd", e.astype(v.dtype), v)
  return (out / e.sum(axis=-1, keepdims=True)).astype(v.dtype)
