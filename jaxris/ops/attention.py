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
  GPU; ``cudnn`` asks for cuDNN's flash attention). ``pallas`` (the default on TPU): SAM's ViT
  attention (DIT's global blocks, SAM's global blocks and 14x14 windows) runs jaxris' own Pallas
  kernel, `grid_attention`, which adds the relative-position terms inside the kernel; other
  sequences of 512 tokens or more without bias or mask (and grids too long for that kernel's one
  block of keys) run Pallas' TPU splash attention; both per device under shard_map; XLA's
  attention for the rest. On the XLA and splash paths the decomposed relative-position term of
  SAM's ViT is folded into the dot product instead of a bias, exactly:
  rel_h[q, kh] + rel_w[q, kw] = [rel_h[q], rel_w[q]] . [onehot(kh), onehot(kw)], so each query gets
  gh + gw extra features and each image key the matching one-hots (prefix tokens get zeros), and no
  [T, S] bias is ever formed (at 512 px: 32 + 32 features beside ViT-B's 64-wide heads, ViT-H's
  80). Attention-weight dropout (BERT and the DIT cross-attention in training) has no place in
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

from jaxris.ops import grid_attention

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
  if impl == "pallas" and bias is None and key_mask is None:
    lay = None if rel_pos is None else _grid_layout(q, k, rel_pos)
    if lay is not None:
      return _pallas_grid_attention(q, k, v, scale, rel_pos, lay)
    if min(q.shape[1], k.shape[1]) >= _PALLAS_MIN_TOKENS:
      return _pallas_attention(q, k, v, scale, rel_pos)
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
  if q.shape[-1] != dv:  # dot_product_attention wants one head size: its XLA formula, written out
    return _xla_core(q, k, v, scale, bias, mask)
  return jax.nn.dot_product_attention(q, k, v, bias, mask, scale=scale)


# Splash attention is for long sequences. Shorter ones without relative positions (BERT's 20
# tokens, BEiT-3's ~217) have small logits, and padding them to 128-token blocks would cost more
# than it saves: they take XLA's attention. So do long queries over a few keys and the reverse
# (SAM's decoder: 4096 image tokens attending to ~7 prompt tokens, whose keys Pallas would pad to
# 128). SAM's 14x14 windows take the grid kernel, 8 windows per step (on a v5p, a SAM-H windowed
# block's forward at 1024 px, 2 images: 2.47 ms with XLA's attention, 1.81 ms with the kernel).
_PALLAS_MIN_TOKENS = 512


def _sharded_over_batch(f, *arrays):
  """f(*arrays) per device when a mesh is set, for heads-major arrays [B, N, ...] (q, k, v, ...): a
  Pallas kernel is opaque to XLA's partitioner, which would gather its operands onto every device;
  under shard_map each device runs it on its own batch rows (and heads, where activations are
  split over the `tensor` axis)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return f(*arrays)
  q = arrays[0]
  size = lambda names: int(np.prod([mesh.shape[a] for a in names]))
  batch = tuple(a for a in ("data", "fsdp") if a in mesh.axis_names and mesh.shape[a] > 1)
  heads = "tensor" if "tensor" in mesh.axis_names and q.shape[1] % mesh.shape["tensor"] == 0 else None
  if batch and q.shape[0] % size(batch):
    batch = ()
  spec = lambda x: jax.sharding.PartitionSpec(batch or None, heads, *(None,) * (x.ndim - 2))
  return jax.shard_map(f, mesh=mesh, in_specs=tuple(spec(x) for x in arrays), out_specs=spec(q),
                       check_vma=False)(*arrays)


def _pallas_attention(q, k, v, scale, rel: RelPos | None):
  """The TPU path for long sequences: q, k, v [B, T, N, d] padded to whole 128-token blocks and
  made heads-major, SAM's relative-position term folded in that layout (`_fold_rel_pos_heads_major`),
  then Pallas' splash attention per device (`_splash_attention`)."""
  t, s = q.shape[1], k.shape[1]
  tp, sp = -(-t // 128) * 128, -(-s // 128) * 128
  heads_major = lambda x, length: jnp.pad(x, ((0, 0), (0, length - x.shape[1]), (0, 0), (0, 0))).transpose(0, 2, 1, 3)
  q_unscaled, k, v = heads_major(q, tp), heads_major(k, sp), heads_major(v, sp)
  q = q_unscaled * jnp.asarray(scale, q.dtype)  # splash has no scale argument
  if rel is not None:
    q, k = _fold_rel_pos_heads_major(q, q_unscaled, k, rel)
  kernel = functools.partial(_splash_attention, real=(t, s))
  return _sharded_over_batch(kernel, q, k, v).transpose(0, 2, 1, 3)[:, :t]


def _grid_layout(q, k, rel: RelPos):
  """`grid_attention`'s layout for self-attention over a prefix + an image grid, or None (then the
  relative-position term is folded into splash attention, or XLA's attention runs)."""
  gh, gw = rel.r_h.shape[0], rel.r_w.shape[0]
  if k.shape[1] != q.shape[1] or q.shape[1] != rel.num_prefix + gh * gw:
    return None
  return grid_attention.layout(gh, gw, rel.num_prefix)


def _pallas_grid_attention(q, k, v, scale, rel: RelPos, lay):
  """The TPU path with SAM's relative positions: `grid_attention`'s kernel (the terms added inside
  it, not folded into q and k), per device; any sequence length up to its MAX_KEYS, windows too."""
  q, k, v = (grid_attention.to_sequences(x, lay) for x in (q, k, v))
  return grid_attention.from_sequences(_grid_kernel(q, k, v, scale, rel, lay), lay)


def _grid_kernel(q, k, v, scale, rel: RelPos, lay, interpret: bool = False):
  """`grid_attention.kernel_attention` on heads-major, unscaled q, k, v [B, N, L, d] in `lay`'s
  order, per device; -> [B, N, L, dv]."""
  rel_h, rel_w = grid_attention.relative_terms(q, rel.r_h, rel.r_w, lay)
  q = q * jnp.asarray(scale, q.dtype)

  def per_device(q, k, v, rel_h, rel_w):
    b, n = q.shape[:2]
    flat = lambda x: x.reshape(b * n, *x.shape[2:])
    out = grid_attention.kernel_attention(flat(q), flat(k), flat(v), flat(rel_h), flat(rel_w),
                                          grid_attention.with_group(lay, b * n), interpret)
    return out.reshape(b, n, *out.shape[1:])

  return _sharded_over_batch(per_device, q, k, v, rel_h, rel_w)


def windowed_attention(qkv, num_heads: int, window: int, *, scale: float, rel_pos: RelPos | None = None,
                       impl: str | None = None):
  """Attention within each window x window window of a grid: qkv [B, Hp, Wp, 3C] (every token's q, k
  and v, each `num_heads` heads wide; the grid's sides whole windows) -> [B, Hp, Wp, C]; `rel_pos`
  over one window. SAM's windowed blocks. On the pallas path with relative positions the windows go
  to `grid_attention`'s kernel straight from the grid, cut out, padded and made heads-major in one
  transpose (on a v5p, a SAM-H windowed block's forward at 1024 px, 2 images: 1.81 ms, against
  2.05 ms with the windows cut out first and then laid out for the kernel); otherwise they are cut
  out and run through `attention`."""
  b, hp, wp, c3 = qkv.shape
  nh, nw, c = hp // window, wp // window, c3 // 3
  lay = grid_attention.layout(window, window, 0) if (impl or path()) == "pallas" and rel_pos else None
  if lay is not None:
    q, k, v = grid_attention.windows_to_sequences(qkv, num_heads, window, lay)
    return grid_attention.sequences_to_windows(_grid_kernel(q, k, v, scale, rel_pos, lay), (b, hp, wp), window, lay)
  x = window_partition(qkv, window)[0].reshape(b * nh * nw, window * window, 3, num_heads, c // num_heads)
  out = attention(x[:, :, 0], x[:, :, 1], x[:, :, 2], scale=scale, rel_pos=rel_pos, impl=impl)
  return window_unpartition(out.reshape(-1, window, window, c), window, (hp, wp), (hp, wp))


def window_partition(x: jnp.ndarray, window: int):
  """[B, H, W, C] -> [B * nW, window, window, C], zero-padding bottom/right to whole windows."""
  b, h, w, c = x.shape
  pad_h, pad_w = (-h) % window, (-w) % window
  if pad_h or pad_w:
    x = jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
  hp, wp = h + pad_h, w + pad_w
  x = x.reshape(b, hp // window, window, wp // window, window, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(-1, window, window, c), (hp, wp)


def window_unpartition(windows: jnp.ndarray, window: int, padded_hw: tuple[int, int], hw: tuple[int, int]):
  """Inverse of ``window_partition``: back to [B, H, W, C], dropping the padding."""
  (hp, wp), (h, w) = padded_hw, hw
  c = windows.shape[-1]
  b = windows.shape[0] // ((hp // window) * (wp // window))
  x = windows.reshape(b, hp // window, wp // window, window, window, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, hp, wp, c)[:, :h, :w]


def _key_onehots(length: int, num_prefix: int, gh: int, gw: int) -> np.ndarray:
  """[length, gh + gw]: each image key's row and column as one-hots (prefix and padding keys: zeros)."""
  onehot = np.zeros((length, gh + gw), np.float32)
  rows, cols = np.divmod(np.arange(gh * gw), gw)
  onehot[num_prefix + np.arange(gh * gw), rows] = 1.0
  onehot[num_prefix + np.arange(gh * gw), gh + cols] = 1.0
  return onehot


def _fold_rel_pos_heads_major(q, q_unscaled, k, rel: RelPos):
  """`_fold_rel_pos` for heads-major, padded q [B, N, T', d] (already scaled) and k [B, N, S', d]:
  each query's rel_h and rel_w terms come from one batched dot against the tables laid out per
  (query row, query column) [gh, gw, gh + gw, d], not two dots and a concatenation (on a v5p, SAM
  ViT-H's block: 1.2 GB less memory traffic per attention, forward and backward)."""
  b, n, tp, d = q.shape
  p = rel.num_prefix
  gh, gw = rel.r_h.shape[0], rel.r_w.shape[0]
  table = grid_attention.per_query_tables(rel.r_h, rel.r_w).astype(q.dtype)
  q_img = q_unscaled[:, :, p:p + gh * gw].reshape(b, n, gh, gw, d)
  q_extra = jnp.einsum("bnhwc,hwkc->bnhwk", q_img, table).reshape(b, n, gh * gw, gh + gw)
  q_extra = jnp.pad(q_extra, ((0, 0), (0, 0), (p, tp - p - gh * gw), (0, 0)))
  k_extra = jnp.broadcast_to(jnp.asarray(_key_onehots(k.shape[2], p, gh, gw), k.dtype), (*k.shape[:3], gh + gw))
  return jnp.concatenate([q, q_extra], axis=-1), jnp.concatenate([k, k_extra], axis=-1)


def _block(length: int) -> int:
  """The largest of 512, 384, 256 and 128 tokens that divides `length` (a multiple of 128)."""
  return next(b for b in (512, 384, 256, 128) if length % b == 0)


def _splash_attention(q, k, v, real: tuple[int, int], interpret: bool = False):
  """Pallas' TPU splash attention (jax.experimental.pallas.ops.tpu.splash_attention) over
  heads-major q [B, N, T', D], k [B, N, S', D], v [B, N, S', Dv] padded to whole 128-token blocks,
  of which the first `real` (T, S) are tokens: padding keys are in their own segment, so no real
  query sees them. The [T, S] logits stay in VMEM, forward and backward. Unlike Pallas' flash
  attention, splash takes the key's and the value's head sizes as they are: SAM ViT-H's 80-wide
  heads plus 64 folded relative-position features (144) and its 80-wide values are not padded to
  one 256-wide size (MXU passes forward: 256 + 128 lanes instead of 256 + 256). The backward is one
  fused kernel (dq, dk and dv from one recomputation of the logits: five matmuls instead of
  flash's seven), with all keys in one block where a sequence allows, so dq is written once
  instead of summed over key blocks. ``interpret`` runs the kernels on any backend (tests, CPU)."""
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks
  b, n, tp, _ = q.shape
  sp = k.shape[2]
  bq, bkv = _block(tp), _block(sp)
  sizes = splash.BlockSizes(block_q=bq, block_kv=bkv, block_kv_compute=bkv,
                            block_q_dkv=bq, block_kv_dkv=sp if sp <= 2048 else bkv, block_kv_dkv_compute=bkv,
                            use_fused_bwd_kernel=True)
  kernel = splash.make_splash_mha(masks.MultiHeadMask([masks.FullMask((tp, sp))] * n), block_sizes=sizes,
                                  head_shards=1, q_seq_shards=1, interpret=interpret)
  if (tp, sp) == real:
    return jax.vmap(kernel)(q, k, v)  # (the kernel is per batch row)
  seg = lambda length, used: jnp.broadcast_to((jnp.arange(length) >= used).astype(jnp.int32), (b, length))
  return jax.vmap(kernel)(q, k, v, splash.SegmentIds(q=seg(tp, real[0]), kv=seg(sp, real[1])))


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
  if p:
    q_extra = jnp.pad(q_extra, ((0, 0), (p, 0), (0, 0), (0, 0)))
  onehot = _key_onehots(k.shape[1], p, gh, gw)
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
