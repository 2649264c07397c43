"""jaxris.ops.attention: the CPU kernel and the accelerator path (jax.nn.dot_product_attention,
forced here on CPU) agree with each other and with a one-softmax reference, and every model that
uses the op matches its official PyTorch module on the accelerator path too (the existing parity
tests cover the CPU path, the default on this machine)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from jaxris.models.sam.image_encoder import decomposed_rel_pos, rel_pos_table
from jaxris.ops import attention as attention_op
from jaxris.ops.attention import RelPos, attention
from parity import assert_close

jax.config.update("jax_default_matmul_precision", "highest")


def _reference(q, k, v, scale, bias=None, key_mask=None):
  """One softmax over all [B, N, T, S] logits (the textbook formula)."""
  logits = jnp.einsum("btnd,bsnd->bnts", q, k) * scale
  if bias is not None:
    logits = logits + bias
  if key_mask is not None:
    logits = jnp.where(key_mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
  return jnp.einsum("bnts,bsnd->btnd", jax.nn.softmax(logits, axis=-1), v)


def _qkv(b, t, s, n, d, dv=None, seed=0, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  make = lambda *shape: jnp.asarray(rng.standard_normal(shape), dtype)
  return make(b, t, n, d), make(b, s, n, d), make(b, s, n, dv or d)


def _rel_case(grid, num_prefix, b=2, n=3, d=16, seed=0):
  """SAM ViT attention inputs: prefix + grid tokens, relative-position tables, and the bias the
  official code adds (zero on every prefix row and column)."""
  q, k, v = _qkv(b, num_prefix + grid[0] * grid[1], num_prefix + grid[0] * grid[1], n, d, seed=seed)
  rng = np.random.default_rng(seed + 1)
  rel_h = jnp.asarray(rng.standard_normal((2 * grid[0] - 1, d)), jnp.float32)
  rel_w = jnp.asarray(rng.standard_normal((2 * grid[1] - 1, d)), jnp.float32)
  rel = RelPos(rel_pos_table(grid[0], grid[0], rel_h), rel_pos_table(grid[1], grid[1], rel_w), num_prefix)
  bias = decomposed_rel_pos(q[:, num_prefix:].reshape(b, *grid, n, d), rel_h, rel_w, grid, grid)
  bias = jnp.pad(bias, ((0, 0), (0, 0), (num_prefix, 0), (num_prefix, 0)))
  return q, k, v, rel, bias


PATHS = ["cpu", "xla"]


@pytest.mark.parametrize("impl", PATHS)
@pytest.mark.parametrize("grid,num_prefix", [((5, 7), 0), ((5, 7), 3), ((4, 8), 20), ((14, 14), 0)])
def test_relative_positions_match_one_softmax(impl, grid, num_prefix):
  # DIT's prefix slots (no relative-position term on their rows and columns), a non-square grid,
  # SAM's 14x14 windows.
  q, k, v, rel, bias = _rel_case(grid, num_prefix)
  scale = q.shape[-1] ** -0.5
  run = jax.jit(lambda q, k, v, r_h, r_w: attention(q, k, v, scale=scale, rel_pos=RelPos(r_h, r_w, num_prefix),
                                                    impl=impl))
  out = run(q, k, v, rel.r_h, rel.r_w)
  assert_close(out, _reference(q, k, v, scale, bias), what=f"{impl} attention with relative positions")


def test_relative_position_gradients_agree_between_paths():
  # Training runs the backward pass of this op (the ViT of L-DIT trains): same gradients both ways,
  # including those of the relative-position tables.
  q, k, v, rel, _ = _rel_case((4, 6), 5)
  scale = q.shape[-1] ** -0.5
  w = jnp.asarray(np.random.default_rng(9).standard_normal(v.shape), jnp.float32)
  grads = {}
  for impl in PATHS:
    loss = lambda q, k, v, r_h, r_w: jnp.sum(w * attention(q, k, v, scale=scale, rel_pos=RelPos(r_h, r_w, 5),
                                                           impl=impl))
    grads[impl] = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4)))(q, k, v, rel.r_h, rel.r_w)
  for name, a, b in zip(("q", "k", "v", "r_h", "r_w"), jax.tree.leaves(grads["xla"]), jax.tree.leaves(grads["cpu"])):
    assert_close(a, b, what=f"d loss / d {name}")


def _check_interpreted_tpu_path(grid, num_prefix, b, n, what):
  """attention(impl="pallas") against one softmax (forward) and the CPU path (every gradient, the
  tables' included), with a value head narrower than the key's."""
  q, k, v, rel, bias = _rel_case(grid, num_prefix, b=b, n=n, d=8, seed=11)
  v = v[..., :6]
  scale = q.shape[-1] ** -0.5
  w = jnp.asarray(np.random.default_rng(12).standard_normal(v.shape), jnp.float32)
  run = lambda impl: lambda q, k, v, r_h, r_w: attention(q, k, v, scale=scale, rel_pos=RelPos(r_h, r_w, num_prefix),
                                                          impl=impl)
  out = jax.jit(run("pallas"))(q, k, v, rel.r_h, rel.r_w)
  assert_close(out, _reference(q, k, v, scale, bias), what=f"{what} (interpreted)")
  grads = {impl: jax.jit(jax.grad(lambda *a: jnp.sum(w * run(impl)(*a)), argnums=(0, 1, 2, 3, 4)))(
      q, k, v, rel.r_h, rel.r_w) for impl in ("pallas", "cpu")}
  for name, a, b in zip(("q", "k", "v", "r_h", "r_w"), grads["pallas"], grads["cpu"]):
    assert_close(a, b, what=f"{what} (interpreted): d loss / d {name}")


@pytest.mark.parametrize("grid,num_prefix,b,n", [
    ((23, 23), 20, 1, 2),  # DIT's 20 slots + a grid whose rows pad to 24 columns: 5 blocks of 128 queries
    ((24, 24), 20, 1, 2),  # rows of whole sublane tiles: one pad and one transpose in, 5 blocks
    ((14, 14), 0, 4, 2),   # SAM's windows, 14 x 16 = 224 tokens each, 8 sequences per grid step
])
def test_the_tpu_grid_kernel_run_interpreted_matches_one_softmax(monkeypatch, grid, num_prefix, b, n):
  # The TPU path with SAM's relative positions (`jaxris.ops.grid_attention`: the two terms added
  # inside the kernel, keys on sublanes) run by Pallas' interpreter on this CPU.
  monkeypatch.setattr(attention_op, "_grid_kernel", functools.partial(attention_op._grid_kernel, interpret=True))
  _check_interpreted_tpu_path(grid, num_prefix, b, n, "grid attention kernel")


def test_the_splash_path_run_interpreted_matches_one_softmax(monkeypatch):
  # Sequences too long for the grid kernel's one block of keys (over 4224 tokens) take Pallas'
  # splash attention, the relative-position term folded into q and k: forced here on DIT's 20
  # slots + a 23x23 grid (549 tokens, padded to 640).
  monkeypatch.setattr(attention_op, "_grid_layout", lambda *a: None)
  monkeypatch.setattr(attention_op, "_splash_attention",
                      functools.partial(attention_op._splash_attention, interpret=True))
  _check_interpreted_tpu_path((23, 23), 20, 1, 2, "splash attention")


@pytest.mark.parametrize("impl", PATHS)
def test_bias_and_key_mask_match_one_softmax(impl):
  # TinyViT's per-head bias table broadcast over the batch; BERT/BEiT-3's key padding, with one row
  # whose keys are all padding (it must stay finite: uniform weights, as transformers does).
  q, k, v = _qkv(3, 7, 9, 4, 8, seed=2)
  bias = jnp.asarray(np.random.default_rng(3).standard_normal((4, 7, 9)), jnp.float32)
  key_mask = jnp.asarray(np.arange(9)[None, :] < np.array([[9], [4], [0]]))
  out = attention(q, k, v, scale=0.3, bias=bias, key_mask=key_mask, impl=impl)
  assert np.isfinite(np.asarray(out)).all()
  assert_close(out, _reference(q, k, v, 0.3, bias[None], key_mask), what=f"{impl} bias + mask")
  assert_close(out[2], v[2].mean(axis=0, keepdims=True).repeat(7, 0), what="all-padding row: uniform weights")


@pytest.mark.parametrize("impl", PATHS)
def test_value_width_and_bfloat16(impl):
  q, k, v = _qkv(2, 5, 6, 2, 8, dv=12, seed=4)
  assert_close(attention(q, k, v, scale=0.5, impl=impl), _reference(q, k, v, 0.5), what=f"{impl} dv != d")
  qb, kb, vb = (t.astype(jnp.bfloat16) for t in (q, k, v))
  out = attention(qb, kb, vb, scale=0.5, impl=impl)
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(_reference(q, k, v, 0.5)), atol=0.05)


def test_dropout_takes_the_einsum_path_on_both():
  # dot_product_attention has no weight dropout: with one, the accelerator path runs the einsum.
  q, k, v = _qkv(2, 5, 5, 2, 4, seed=5)
  keep = jnp.asarray(np.random.default_rng(6).random((2, 2, 5, 5)) > 0.3)
  drop = lambda w: jnp.where(keep, w / 0.7, 0)
  outs = [attention(q, k, v, scale=0.5, dropout=drop, impl=impl) for impl in PATHS]
  logits = jnp.einsum("btnd,bsnd->bnts", q, k) * 0.5
  ref = jnp.einsum("bnts,bsnd->btnd", drop(jax.nn.softmax(logits, axis=-1)), v)
  for impl, out in zip(PATHS, outs):
    assert_close(out, ref, what=f"{impl} with dropout")


def test_the_switch(monkeypatch):
  monkeypatch.delenv("JAXRIS_ATTENTION", raising=False)
  assert attention_op.path() == ("cpu" if jax.default_backend() == "cpu" else "xla")
  monkeypatch.setenv("JAXRIS_ATTENTION", "xla")
  assert attention_op.path() == "xla"
  with attention_op.use("cpu"):  # the context manager wins over the environment
    assert attention_op.path() == "cpu"
    with attention_op.use("xla"):
      assert attention_op.path() == "xla"
    assert attention_op.path() == "cpu"
  assert attention_op.path() == "xla"
  monkeypatch.setenv("JAXRIS_ATTENTION", "tpu")
  with pytest.raises(ValueError, match="JAXRIS_ATTENTION"):
    attention_op.path()
  with pytest.raises(ValueError, match="unknown attention path"):
    with attention_op.use("flash"):
      pass


def test_aot_lowers_on_the_accelerator_path(monkeypatch):
  # python -m jaxris.aot runs on a CPU host (default backend "cpu") but compiles for TPUs.
  from jaxris.aot import lower_for_tpu
  monkeypatch.delenv("JAXRIS_ATTENTION", raising=False)
  q, k, v, rel, _ = _rel_case((4, 4), 2)
  traced = []
  monkeypatch.setattr(attention_op, "_pallas_grid_attention", lambda q, k, v, *a: traced.append(1) or v)
  step = jax.jit(lambda q, k, v: attention(q, k, v, scale=1.0, rel_pos=rel))
  lower_for_tpu(step, q, k, v)
  assert traced, "jaxris.aot lowered the CPU attention kernel"


def _compile_for_a_tpu_mesh(shape, grid, num_prefix, d=64):
  """The compiled HLO of attention(impl="pallas")'s gradient, q, k, v of `shape` split over data x
  tensor on a v5e:2x2, compiled by libtpu on this CPU host."""
  pytest.importorskip("libtpu")
  from jax.experimental import topologies
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

  import jaxris.aot  # noqa: F401  (libtpu's environment for a host without TPUs)
  devices = np.asarray(topologies.get_topology_desc(topology_name="v5e:2x2", platform="tpu").devices)
  mesh = Mesh(devices.reshape(2, 1, 2), ("data", "fsdp", "tensor"))
  spec = jax.ShapeDtypeStruct(shape, jnp.bfloat16, sharding=NamedSharding(mesh, P("data", None, "tensor")))
  r = jax.ShapeDtypeStruct((grid, grid, d), jnp.bfloat16, sharding=NamedSharding(mesh, P()))

  def loss(q, k, v, r_h, r_w):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      out = attention(q, k, v, scale=0.125, rel_pos=RelPos(r_h, r_w, num_prefix), impl="pallas")
    return jnp.sum(out.astype(jnp.float32) ** 2)
  # (Mosaic refuses jax_default_matmul_precision="highest" with bf16 operands, which this file sets.)
  with jax.default_matmul_precision("default"):
    compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4))).lower(spec, spec, spec, r, r).compile()
  hlo = compiled.as_text()
  assert "all-gather" not in hlo  # each device attends over its own rows and heads
  return compiled, hlo


@pytest.mark.parametrize("shape,grid,num_prefix,length", [
    ((4, 1044, 4, 64), 32, 20, 1152),  # DIT's 20 slots + 32x32 (512 px): 24 + 1024 tokens, padded to 1152
    ((16, 196, 4, 64), 14, 0, 224),    # SAM's 14x14 windows, rows padded to 16 columns
])
def test_the_tpu_grid_kernel_compiles_for_a_tpu_on_a_mesh(shape, grid, num_prefix, length):
  # The TPU path with relative positions: `grid_attention`'s two kernels per device under
  # shard_map (batch over data, heads over tensor), compiled by libtpu (their numbers: the
  # interpreted tests above). Like splash's they carry no cost estimate; jaxris.aot adds their MXU
  # work at the heads' widths in 128-lane passes: per device 2 rows x 2 heads (or 8 windows x 2
  # heads); forward q.k and p.v, backward q.k, do.v, p.do, ds.q and ds.k.
  from jaxris.pallas_costs import uncosted_kernels
  _, hlo = _compile_for_a_tpu_mesh(shape, grid, num_prefix)
  assert "splash" not in hlo
  kernels = {k.name.rsplit(".", 1)[0]: k for k in uncosted_kernels(hlo)}
  assert sorted(kernels) == ["grid_attention_bwd", "grid_attention_fwd"]
  pairs = 2 * (shape[0] // 2) * (shape[2] // 2) * length * length
  assert kernels["grid_attention_fwd"].flops == pairs * (128 + 128)
  assert kernels["grid_attention_bwd"].flops == pairs * (3 * 128 + 2 * 128)
  assert kernels["grid_attention_bwd"].bytes >= (shape[0] // 2) * (shape[2] // 2) * length * 64 * 2 * 4  # bf16 q, k, v, do


def test_pallas_splash_attention_compiles_for_a_tpu_on_a_mesh(monkeypatch):
  # Longer sequences than the grid kernel takes: Pallas splash attention per device, 1044 tokens
  # (forced here) padded to 128-blocks, q and k with 32 + 32 relative-position features, v as it is (64).
  monkeypatch.setattr(attention_op, "_grid_layout", lambda *a: None)
  _, hlo = _compile_for_a_tpu_mesh((4, 1044, 4, 64), 32, 20)
  # Splash's kernels carry no cost estimate, so jaxris.aot adds their FLOPs: per device 2 rows x
  # 2 heads x 1152 x 1152 tokens; the forward computes q.k (128 features) and p.v (64, one
  # 128-lane MXU pass), the fused backward q.k, do.v, p.do, ds.q and ds.k.
  from jaxris.pallas_costs import uncosted_kernels
  kernels = {k.name.split("_segmented")[0]: k for k in uncosted_kernels(hlo)}
  pairs = 2 * 2 * 2 * 1152 * 1152
  assert sorted(kernels) == ["splash_mha_dkv", "splash_mha_fwd"]
  assert kernels["splash_mha_fwd"].flops == pairs * (128 + 128)
  assert kernels["splash_mha_dkv"].flops == pairs * (3 * 128 + 2 * 128)
  assert kernels["splash_mha_dkv"].bytes >= 2 * 2 * 1152 * (2 * 128 + 64) * 2  # reads bf16 q, k and v at least


# --- Whole models on the accelerator path against their official PyTorch modules.

@pytest.fixture
def xla_path(monkeypatch):
  """Forces the accelerator path and fails if a CPU kernel is traced (dropout aside)."""
  def refuse(*a, **k):
    raise AssertionError("the CPU attention kernel ran on the forced accelerator path")
  monkeypatch.setattr(attention_op, "_cpu_grid_attention", refuse)
  monkeypatch.setattr(attention_op, "_einsum_attention", refuse)
  with attention_op.use("xla"):
    yield


def _jit():
  """A fresh jitted call: jit caches traces per function, and the path is read at trace time."""
  return nnx.jit(lambda model, *args: model(*args))


def test_sam_vit_on_the_accelerator_path(xla_path):
  from sam_fixtures import nchw, nhwc
  from test_sam_image_encoder import official_encoder

  from jaxris.weights import sam as sam_weights
  # Windowed blocks on a 10x18 grid (padded windows) and a global block.
  official = official_encoder(96, 2, 4, (1,), img_size=288, use_abs_pos=False)
  x = torch.randn(1, 3, 160, 288, generator=torch.Generator().manual_seed(4))
  with torch.no_grad():
    ref = official(x)
  ours = nchw(_jit()(sam_weights.encoder_from_torch(official.state_dict()), jnp.asarray(nhwc(x))))
  assert_close(ours, ref, what="SAM ViT (xla attention)")


def test_sam_vit_on_the_tpu_path_interpreted(monkeypatch):
  # The TPU path of SAM's ViT (`grid_attention`'s kernels, run by Pallas' interpreter): windowed
  # blocks straight from the grid (`windowed_attention`, a 10x18 grid in padded 14x14 windows) and
  # a global block, against the official encoder.
  from sam_fixtures import nchw, nhwc
  from test_sam_image_encoder import official_encoder

  from jaxris.weights import sam as sam_weights
  monkeypatch.setattr(attention_op, "_grid_kernel", functools.partial(attention_op._grid_kernel, interpret=True))
  kernels, run_kernel = [], attention_op.grid_attention.kernel_attention
  monkeypatch.setattr(attention_op.grid_attention, "kernel_attention",
                      lambda *a: kernels.append(a[5]) or run_kernel(*a))
  official = official_encoder(96, 2, 4, (1,), img_size=288, use_abs_pos=False)
  x = torch.randn(1, 3, 160, 288, generator=torch.Generator().manual_seed(4))
  with torch.no_grad():
    ref = official(x)
  with attention_op.use("pallas"):
    ours = nchw(_jit()(sam_weights.encoder_from_torch(official.state_dict()), jnp.asarray(nhwc(x))))
  assert_close(ours, ref, what="SAM ViT (pallas attention, interpreted)")
  assert [(k.gh, k.gw, k.length) for k in kernels] == [(14, 14, 224), (10, 18, 240)]  # windows, then global


def test_sam_mask_decoder_on_the_accelerator_path(xla_path):
  from sam_fixtures import convert, nhwc, official_sam
  official = official_sam(embed_dim=96, depth=2, num_heads=4, global_attn_indexes=(1,), seed=7)
  ours = convert(official)
  g = torch.Generator().manual_seed(11)
  emb, sparse, dense = torch.randn(1, 256, 64, 64, generator=g), torch.randn(2, 4, 256, generator=g), \
      torch.randn(2, 256, 64, 64, generator=g)
  with torch.no_grad():
    ref_masks, ref_iou = official.mask_decoder(emb, official.prompt_encoder.get_dense_pe(), sparse, dense, True)
  run = nnx.jit(lambda m, *a: m.mask_decoder(*a, True))
  masks, iou = run(ours, jnp.asarray(nhwc(emb)), ours.prompt_encoder.get_dense_pe(), jnp.asarray(sparse.numpy()),
                   jnp.asarray(nhwc(dense)))
  assert_close(masks, ref_masks, what="two-way transformer masks (xla attention)")
  assert_close(iou, ref_iou, what="iou (xla attention)")


def test_bert_on_the_accelerator_path(xla_path):
  from test_bert import ODD, _compare, _inputs, _pair
  torch_model, model = _pair(ODD, seed=3)
  ids, mask, types = _inputs(4, 11, ODD["vocab_size"], ODD["type_vocab_size"])
  with torch.no_grad():
    ref = torch_model(*(torch.tensor(a) for a in (ids, mask, types)), output_hidden_states=True)
  _compare(_jit()(model, *(jnp.asarray(a) for a in (ids, mask, types))), ref, "BERT (xla attention)")


def test_beit3_on_the_accelerator_path(xla_path):
  from test_beit3 import SMALL, inputs, random_torch_model

  from jaxris.weights import beit3 as beit3_weights
  tm = random_torch_model(SMALL, seed=2)
  images, ids, mask = inputs(SMALL)
  with torch.no_grad():
    ref = tm(textual_tokens=torch.from_numpy(ids), visual_tokens=torch.from_numpy(images),
             text_padding_position=torch.from_numpy(mask == 0))
  run = nnx.jit(lambda m, ids, images, mask: m(ids, images, mask).encoder_out)
  out = run(beit3_weights.from_torch(tm.state_dict()), jnp.asarray(ids, jnp.int32),
            jnp.asarray(images.transpose(0, 2, 3, 1)), jnp.asarray(mask, jnp.int32))
  assert_close(out, ref["encoder_out"], what="BEiT-3 joint (xla attention)")


def _dit_case(scheme):
  """(our model, its inputs, the reference's logits) for a small DIT of `scheme`."""
  from dit_reference import DitNet
  from sam_fixtures import nhwc
  from test_dit import BERT, _inputs
  from transformers import BertConfig as HFBertConfig

  from jaxris.models.bert import BertConfig
  from jaxris.weights import dit as dit_weights
  from jaxris.weights.random_torch import randomize_
  torch.manual_seed(0)
  ref = randomize_(DitNet(scheme, img_size=256, bert_config=HFBertConfig(**BERT)), seed=1)
  model = dit_weights.from_torch(ref.state_dict(), scheme, bert=BertConfig(**BERT))
  images, ids, mask = _inputs(size=128)
  with torch.no_grad():
    expected = ref(images, ids, mask)
  return model, (jnp.asarray(nhwc(images)), jnp.asarray(ids.numpy()), jnp.asarray(mask.numpy())), expected


@pytest.mark.parametrize("scheme", ["crossatt_ffn"])
def test_dit_on_the_accelerator_path(xla_path, scheme):
  # Every DIT scheme prepends its 20 text slots to the ViT's global blocks (relative positions on
  # the image block only); crossatt_ffn also writes them by the slots' cross-attention over the
  # image tokens (dit_crossatt.MHAtt). L-DIT differs only in how the slots are written.
  model, inputs, expected = _dit_case(scheme)
  assert_close(_jit()(model, *inputs), expected, what=f"{scheme} logits (xla attention)")


def test_dit_on_the_tpu_path_interpreted(monkeypatch):
  # The same on the TPU path, `grid_attention`'s kernels run by Pallas' interpreter: 20 slots
  # (padded to 24 in front) + an 8x8 grid in every global block.
  monkeypatch.setattr(attention_op, "_grid_kernel", functools.partial(attention_op._grid_kernel, interpret=True))
  model, inputs, expected = _dit_case("crossatt_ffn")
  with attention_op.use("pallas"):
    assert_close(_jit()(model, *inputs), expected, what="crossatt_ffn logits (pallas attention, interpreted)")


def test_tiny_vit_on_the_accelerator_path(xla_path):
  from mobile_sam_fixtures import encoder_from_torch, official_features, official_tiny_vit
  from sam_fixtures import nchw, nhwc
  official = official_tiny_vit((224, 224), seed=1)
  x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(2))
  ref = official_features(official, x)
  ours = nchw(_jit()(encoder_from_torch(official), jnp.asarray(nhwc(x))))
  assert_close(ours, ref, what="TinyViT (xla attention)")
