"""Compile the exact train step for a TPU pod on this (CPU-only) machine: does it fit, how fast.

  python -m jaxris.aot --config configs/ldit_vith.py --topology v5e:16x16 [--mesh "(64,4,1)"] \\
      [--config.batch_size=1024] [--config.model.remat=True] [--json out.json]

libtpu (``pip install -e ".[tpu-aot]"``) describes the topology's chips without any TPU attached;
the update step that ``jaxris.train`` runs (the same function from `create_trainer`, the same
shardings, the recipe's dtype and remat) is lowered with abstract parameters and batch (no data,
no weights) and compiled by XLA's TPU compiler. Printed: per-chip memory (arguments + outputs +
temporaries - aliased, from ``memory_analysis()``) against the chip's HBM, FLOPs per step
(analytic, and XLA's ``cost_analysis()``), the estimated step time, and the MFU and images/s that
implies. The step time is the TPU cost model's ``optimal_seconds`` where it is valid; for whole
train steps it usually is not (negative), and then it is the roofline of XLA's own per-chip counts
(its FLOPs at peak or its bytes accessed at HBM bandwidth, whichever is slower; communication not
included), which the table says. The Pallas splash-attention kernels of the TPU path reach XLA
without a cost estimate, so their FLOPs are added to either (`estimate_step`, jaxris/pallas_costs.py). These
are compiler estimates, not measurements. Every model family compiles (dit, evf, bridge); the
analytic FLOPs count the encoders (see `model_flops`).
libtpu's own flags (the ``LIBTPU_INIT_ARGS`` environment variable, as on a real TPU host) change what
is compiled, and so the estimate: the report records them. One that matters here:
``LIBTPU_INIT_ARGS=--xla_msa_enable=false`` turns off memory-space assignment (XLA's prefetches of
buffers into on-chip memory), whose asynchronous copies the cost model charges as step time; that
takes ViT-H's v5p-128 row from 46.7% to 52.7% MFU. Whether a real TPU agrees is not measured.
Exit status: 0 when it compiled (fitting or not), 1 when libtpu is missing or the compile fails,
2 on bad input.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import math
import os
import re
import sys

# libtpu takes a machine-wide lock file unless told that several processes may load it, and
# looks for TPU workers it will not find; neither matters when nothing runs on a TPU.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")

import numpy as np  # noqa: E402

from jaxris import pallas_costs  # noqa: E402

# chip generation -> (HBM bytes per chip, peak bf16 FLOP/s per chip, HBM bytes/s per chip)
CHIPS = {
    "v4": (32 << 30, 275e12, 1.23e12),
    "v5e": (16 << 30, 197e12, 8.19e11),
    "v5p": (95 << 30, 459e12, 2.765e12),
    "v6e": (32 << 30, 918e12, 1.64e12),
}
TOPOLOGY = re.compile(r"^(v4|v5e|v5p|v6e):(\d+(?:x\d+){1,2})$")
HOW_TO_GET_LIBTPU = ('jaxris.aot: error: libtpu is not installed; it is what describes and compiles for TPU chips '
                     'here: pip install -e ".[tpu-aot]" (or pip install libtpu==0.0.42.1, the version jax 0.10.2 wants)')


class BadInput(ValueError):
  """Input the user can fix: printed as one line, exit status 2."""


def parse_topology(name: str) -> tuple[str, int]:
  """'v5e:16x16' -> ('v5e', 256)."""
  m = TOPOLOGY.match(name or "")
  if not m:
    raise BadInput(f"unknown topology {name!r}: expected GEN:AxB[xC] with GEN one of {sorted(CHIPS)}, "
                   "e.g. v5e:16x16, v4:4x4x4, v5p:4x4x4, v6e:8x8")
  return m.group(1), math.prod(int(d) for d in m.group(2).split("x"))


def parse_mesh(text, chips: int) -> tuple[int, int, int]:
  """'(64,4,1)' (data, fsdp, tensor; one -1 allowed) -> a tuple whose product is `chips`."""
  try:
    shape = list(ast.literal_eval(text) if isinstance(text, str) else text)
    assert len(shape) == 3 and all(isinstance(s, int) and (s > 0 or s == -1) for s in shape)
    assert shape.count(-1) <= 1
  except Exception:
    raise BadInput(f"bad mesh {text!r}: expected (data, fsdp, tensor), e.g. \"(64,4,1)\", one -1 allowed") from None
  if -1 in shape:
    rest = math.prod(s for s in shape if s != -1)
    if chips % rest:
      raise BadInput(f"mesh {tuple(shape)} does not divide the {chips} chips")
    shape[shape.index(-1)] = chips // rest
  if math.prod(shape) != chips:
    raise BadInput(f"mesh {tuple(shape)} has {math.prod(shape)} devices, the topology has {chips} chips")
  return tuple(shape)


# --- The model, abstractly.

def abstract_model(cfg):
  """The recipe's model from nnx.eval_shape (shapes and logical axes, no weights), with its dtype and remat."""
  from flax import nnx

  from jaxris import build
  from jaxris.models.bert import BertConfig
  from jaxris.models.ris.bridge.model import BridgeSam
  from jaxris.models.ris.dit_sam import RisSam
  from jaxris.models.ris.evf import EvfSam

  dtype = build.DTYPES[cfg.model.dtype]
  family = build.family(cfg.model)
  if family in ("dit", "bridge"):
    # The converted bert-base-uncased is BertConfig's default; "minilm" is the bundled one's config.
    bert = (BertConfig.from_hf_config(build.text_encoder_dir("minilm")) if cfg.init.bert == "minilm"
            else BertConfig())
    if family == "dit":
      return nnx.eval_shape(lambda: RisSam(build.dit_config(cfg.model, bert), rngs=nnx.Rngs(0), dtype=dtype))
    # CLIP's sizes from the recipe (ViT-L/14-336 + clip_overrides), the tables' from bridge_sizes: the
    # constants (CLIP text tables) are random here, which changes no shape.
    return nnx.eval_shape(lambda: BridgeSam(build.bridge_config(cfg.model, bert), rngs=nnx.Rngs(0), dtype=dtype))
  vocab = 30522 if cfg.init.tokenizer == "minilm" else None  # else BEiT-3's XLM-R vocabulary
  return nnx.eval_shape(lambda: EvfSam(build.evf_config(cfg.model, vocab_size=vocab), rngs=nnx.Rngs(0), dtype=dtype))


def _concrete(rest):
  """Buffers and RNG state are constants of the step (train.py closes over them): make them real."""
  import jax

  def one(s):
    if jax.dtypes.issubdtype(s.dtype, jax.dtypes.prng_key):
      return jax.random.key(0) if not s.shape else jax.random.split(jax.random.key(0), s.shape[0])
    return np.ones(s.shape, s.dtype)
  return jax.tree.map(one, rest)


def batch_shapes(cfg, model, micro_batch: int) -> dict:
  """name -> (shape, dtype) of one (micro-)batch: the fields the loss and the model read, picked as
  jaxris.train picks them, with the dtypes of jaxris.data.loader's batches."""
  size, length = cfg.data.image_size, cfg.model.max_tokens
  shapes = {"image": ((micro_batch, size, size, 3), np.float32), "mask": ((micro_batch, size, size), np.float32),
            "input_ids": ((micro_batch, length), np.int32), "attention_mask": ((micro_batch, length), np.int32),
            "no_target": ((micro_batch,), np.bool_), "category": ((micro_batch,), np.int32)}
  if "image_evf" in model.BATCH_INPUTS:
    e = cfg.data.evf_size
    shapes["image_evf"] = ((micro_batch, e, e, 3), np.float32)
  keys = dict.fromkeys(getattr(model, "LOSS_INPUTS", ("mask",)) + model.BATCH_INPUTS)
  return {k: shapes[k] for k in keys}


# --- Analytic FLOPs: the encoders' matmuls and attention (the mask decoder, < 1%, is left out; for
# the bridge also its pixel decoder, DFAM, Txt2txt and feature pyramids: see `model_flops`).

def _transformer_flops(tokens: int, width: int, mlp: int, layers: int, attn_tokens: int | None = None) -> float:
  """Forward FLOPs of `layers` transformer layers on `tokens` tokens per sample; `attn_tokens` is
  how many keys each query sees (default: all)."""
  keys = tokens if attn_tokens is None else attn_tokens
  return layers * (2 * tokens * (4 * width * width + 2 * width * mlp) + 4 * tokens * keys * width)


def _vit_flops(enc, image_size: int, slots: int, windowed: bool) -> float:
  """One forward of the ViT on `image_size` pixels (DIT runs SAM's 1024-px encoder at 512: its
  config's img_size is the checkpoint's, not the input's)."""
  grid = image_size // enc.patch_size
  d, m = enc.embed_dim, int(enc.embed_dim * enc.mlp_ratio)
  flops = 2 * grid * grid * enc.patch_size ** 2 * enc.in_chans * d  # patch embedding
  n_global = len(enc.global_attn_indexes) if windowed else enc.depth
  flops += _transformer_flops(grid * grid + slots, d, m, n_global)
  if enc.depth - n_global:
    ws = enc.window_size
    padded = (-(-grid // ws) * ws) ** 2
    flops += _transformer_flops(padded, d, m, enc.depth - n_global, attn_tokens=ws * ws)
  out = enc.out_chans
  return flops + 2 * grid * grid * (d * out + 9 * out * out)  # the neck


def _clip_flops(clip) -> float:
  """One forward of the CLIP vision tower: patch embedding, then every layer on the grid + class token."""
  grid = clip.image_size // clip.patch_size
  embed = 2 * grid * grid * clip.patch_size ** 2 * clip.num_channels * clip.hidden_size
  return embed + _transformer_flops(grid * grid + 1, clip.hidden_size, clip.intermediate_size,
                                    clip.num_hidden_layers)


def _bert_layer_factors(freeze, layers: int) -> list[int]:
  """Per layer of the bridge's BERT: 3 when it trains; 2 when it is frozen but something below it
  trains (its weights need no gradient, its input does: the backward still runs through it); 1 when
  frozen with nothing trainable below (the official bridge: embeddings and layers 10-11 frozen, 0-9
  train -> 3 x 10, 2 x 2)."""
  from jaxris.train import is_frozen
  below = not is_frozen("bert.embeddings", freeze)
  factors = []
  for i in range(layers):
    trains = not is_frozen(f"bert.encoder.layer.{i}", freeze)
    below = below or trains
    factors.append(3 if trains else 2 if below else 1)
  return factors


def model_flops(cfg, model, micro_batch: int) -> float:
  """Training FLOPs of one step: 3x forward (forward, and backward for inputs and weights) for the
  parts that train, 1x for frozen ones (nothing below them needs a gradient; the bridge's frozen BERT
  layers above trained ones count 2x, see `_bert_layer_factors`). The bridge counts its three
  encoders only (SAM's windowed ViT, CLIP's vision tower, BERT); its pixel decoder, DFAM, Txt2txt,
  feature pyramids and SAM decoder are left out, so its count is short of the whole step's."""
  from jaxris import build
  from jaxris.train import is_frozen
  factor = lambda prefix: 1 if is_frozen(prefix, cfg.freeze) else 3
  mc = model.cfg
  family = build.family(cfg.model)
  if family == "dit":
    b = mc.bert
    bert_layers = b.num_hidden_layers if mc.bert_layer < 0 else mc.bert_layer  # later layers are dead code
    text = _transformer_flops(cfg.model.max_tokens, b.hidden_size, b.intermediate_size, bert_layers)
    slots = 0 if mc.scheme == "default" else 20
    image = _vit_flops(mc.sam.encoder, cfg.data.image_size, slots, windowed=False)  # DIT: global attention everywhere
    return micro_batch * (factor("lang_encoder") * text + factor("visual_encoder") * image)
  if family == "bridge":
    b = mc.bert
    layer = _transformer_flops(cfg.model.max_tokens, b.hidden_size, b.intermediate_size, 1)
    text = layer * sum(_bert_layer_factors(cfg.freeze, b.num_hidden_layers))
    image = _vit_flops(mc.sam.encoder, cfg.data.image_size, 0, windowed=True)
    return micro_batch * (text + factor("sam_encoder") * image + factor("clip") * _clip_flops(mc.clip))
  be = mc.beit3
  tokens = (cfg.data.evf_size // be.patch_size) ** 2 + 1 + cfg.model.max_tokens
  beit3 = _transformer_flops(tokens, be.encoder_embed_dim, be.encoder_ffn_embed_dim, be.encoder_layers)
  image = _vit_flops(mc.sam.encoder, cfg.data.image_size, 0, windowed=True)
  return micro_batch * (factor("mm_extractor") * beit3 + factor("visual_model.image_encoder") * image)


# --- Compile and report.

@dataclasses.dataclass
class _Memory:  # memory_analysis()'s fields, rebuilt when the compiler refuses for lack of HBM
  argument_size_in_bytes: int
  output_size_in_bytes: int
  temp_size_in_bytes: int
  alias_size_in_bytes: int


def lower_for_tpu(step, *args):
  """`step` lowered as it runs on a TPU: this host's backend is the CPU, so the attention path
  that jaxris.ops.attention would pick here (the CPU kernel) is overridden by the TPU's (Pallas
  splash attention for long sequences; JAXRIS_ATTENTION=xla|pallas chooses another)."""
  from jaxris.ops import attention
  with attention.use(tpu_attention_path()):
    return step.lower(*args)


def tpu_attention_path() -> str:
  chosen = os.environ.get("JAXRIS_ATTENTION", "auto").strip().lower()
  return chosen if chosen in ("xla", "pallas") else "pallas"


# `%name = (DEST, SOURCE, context) copy-start(...)`: an asynchronous copy between memory spaces, which
# memory-space assignment inserts to prefetch a buffer into on-chip memory (or evict it).
_COPY_START = re.compile(r"^\s*(?:ROOT )?%[\w.\-]+ = \((\w+\[[\d,]*\])")


def async_copies(hlo_text: str) -> dict:
  """The compiled module's asynchronous copies (memory-space assignment's prefetches and evictions):
  how many, and the bytes they move (logical sizes), one chip's program. XLA's TPU cost model charges
  them as step time (README, session 16)."""
  moved = [pallas_costs.nbytes(m.group(1)) for line in hlo_text.splitlines()
           if " copy-start(" in line and (m := _COPY_START.match(line))]
  return {"count": len(moved), "bytes": int(sum(moved))}


def libtpu_flags() -> str:
  """The flags libtpu reads from its environment when it starts (LIBTPU_INIT_ARGS); '' for its defaults."""
  return " ".join(os.environ.get("LIBTPU_INIT_ARGS", "").split())


def tpu_devices(topology: str) -> np.ndarray:
  """The chips of `topology` as JAX devices described by libtpu (no TPU needed), one per chip."""
  from jax.experimental import topologies

  gen, chips = parse_topology(topology)
  # libtpu describes a v4 chip as its two TensorCores unless asked for megacore, the mode JAX runs
  # v4 in (one device per chip); v5e, v5p and v6e are described one device per chip already.
  options = {"chip_config_name": "megacore"} if gen == "v4" else {}
  try:
    desc = topologies.get_topology_desc(topology_name=topology, platform="tpu", **options)
  except Exception as e:  # libtpu rejects shapes that are no real slice
    raise BadInput(f"topology {topology!r} is not one libtpu knows: {str(e).splitlines()[0]}") from None
  devices = np.asarray(desc.devices)
  if devices.size != chips:
    raise BadInput(f"topology {topology} has {devices.size} devices, expected {chips} chips")
  return devices


def estimate_step(cost: dict, kernels: list, peak: float, bandwidth: float) -> tuple[float | None, str, float]:
  """(step seconds, where they come from, seconds the uncosted Pallas kernels added) for one chip's
  program, from XLA's ``cost_analysis()`` and `pallas_costs.uncosted_kernels`.

  XLA's TPU cost model gives the whole program's time as `optimal_seconds`; for a train step it is
  often not valid (negative). Then the estimate is the roofline of XLA's own per-chip counts: the
  slower of its FLOPs at peak and its bytes accessed at HBM bandwidth (no communication). Both miss
  the matmul work of Pallas kernels built without a cost estimate (splash attention's): the
  cost model charges them their bytes only, so each gets the time its FLOPs take at peak beyond
  that, and the roofline gets their FLOPs.
  """
  kernel_flops = sum(k.flops for k in kernels if k.flops)
  seconds = float(cost.get("optimal_seconds", -1.0))
  if seconds > 0:
    base, source = seconds, "xla optimal_seconds"
    full = seconds + sum(max(0.0, k.flops / peak - k.bytes / bandwidth) for k in kernels if k.flops)
  elif cost.get("flops"):
    roofline = lambda flops: max(flops / peak, float(cost.get("bytes accessed", 0.0)) / bandwidth)
    base, source = roofline(float(cost["flops"])), "roofline of xla flops/bytes"
    full = roofline(float(cost["flops"]) + kernel_flops)
  else:
    return None, "none", 0.0
  if kernel_flops:
    source += " + Pallas kernel FLOPs"
  return full, source, full - base


def compile_step(cfg, topology: str, mesh_shape=None) -> dict:
  """Compiles `cfg`'s train step for `topology` and returns the report (see `format_table`)."""
  import jax
  from jax.sharding import Mesh

  from jaxris.models.functional import split_params
  from jaxris.sharding import AXES, batch_sharding
  from jaxris.train import create_trainer

  gen, chips = parse_topology(topology)
  mesh_shape = parse_mesh(cfg.mesh if mesh_shape is None else mesh_shape, chips)
  data_parallel = mesh_shape[0] * mesh_shape[1]
  if cfg.batch_size % cfg.grad_accum or (cfg.batch_size // cfg.grad_accum) % data_parallel:
    raise BadInput(f"batch_size {cfg.batch_size} / grad_accum {cfg.grad_accum} is not a multiple of the "
                   f"data x fsdp mesh size {data_parallel}")
  micro_batch = cfg.batch_size // cfg.grad_accum
  devices = tpu_devices(topology)
  mesh = Mesh(devices.reshape(mesh_shape), AXES)

  model = abstract_model(cfg)
  graphdef, params, rest = split_params(model)
  trainer = create_trainer(cfg, graphdef, params, _concrete(rest), mesh, steps_per_epoch=1000,
                           total_steps=100_000, materialize=False)
  state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), trainer.abstract,
                       trainer.shardings)
  batch = {k: jax.ShapeDtypeStruct(shape, dtype, sharding=batch_sharding(mesh, len(shape)))
           for k, (shape, dtype) in batch_shapes(cfg, model, micro_batch).items()}
  hbm, peak, bandwidth = CHIPS[gen]
  lowered = lower_for_tpu(trainer.step, state, batch)
  try:
    compiled = lowered.compile()
  except jax.errors.JaxRuntimeError as e:
    # The TPU compiler refuses a program that cannot fit; its message has the temporaries needed.
    m = re.search(r"HLO temporaries \(([\d.]+)([KMGT])\)", str(e))
    if "RESOURCE_EXHAUSTED" not in str(e) or not m:
      raise
    temp = float(m.group(1)) * 1024 ** "KMGT".index(m.group(2)) * 1024
    shard_bytes = lambda s: math.prod(s.sharding.shard_shape(s.shape)) * np.dtype(s.dtype).itemsize
    args = sum(shard_bytes(s) for s in jax.tree.leaves((state, batch)))
    mem = _Memory(int(args), 0, int(temp), 0)  # outputs are the donated state (aliased)
    cost, refused = {}, str(e).splitlines()[0][:300]
  else:
    mem, refused = compiled.memory_analysis(), None
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    cost = dict(cost or {})
  per_chip = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
              - mem.alias_size_in_bytes)
  xla_flops = float(cost.get("flops", 0.0)) * chips  # the cost is of one chip's (SPMD) program
  analytic = model_flops(cfg, model, micro_batch)
  hlo = "" if refused else compiled.as_text()
  kernels = pallas_costs.uncosted_kernels(hlo)
  step_s, source, kernel_s = estimate_step(cost, kernels, peak, bandwidth)
  kernel_flops = sum(k.flops for k in kernels if k.flops)
  return {
      "topology": topology, "chips": chips, "mesh": list(mesh_shape), "global_batch": micro_batch,
      "grad_accum": cfg.grad_accum, "dtype": cfg.model.dtype,
      "remat": bool(cfg.model.remat) if "remat" in cfg.model else False,  # EVF, bridge: no remat (frozen ViTs)
      "attention": tpu_attention_path(),
      "libtpu_flags": libtpu_flags(),
      "per_chip_bytes": int(per_chip), "hbm_bytes": int(hbm), "fits": bool(per_chip <= hbm) and refused is None,
      "memory": {"arguments": int(mem.argument_size_in_bytes), "outputs": int(mem.output_size_in_bytes),
                 "temporaries": int(mem.temp_size_in_bytes), "aliased": int(mem.alias_size_in_bytes)},
      "model_flops_per_step": analytic, "xla_flops_per_step": xla_flops,
      "estimated_step_s": step_s, "step_time_source": source,
      "estimated_mfu": analytic / (step_s * chips * peak) if step_s else None,
      "images_per_s": micro_batch / step_s if step_s else None,
      "peak_flops_per_chip": peak,
      # Pallas kernels XLA has no cost for, one chip's program: FLOPs added to the estimate above, and
      # the names of any whose FLOPs jaxris does not know either (their time is then bytes only).
      "uncosted_kernels": {"count": len(kernels), "flops": kernel_flops, "seconds_added": kernel_s,
                           "unknown": sorted({k.name for k in kernels if k.flops is None})},
      "async_copies": async_copies(hlo),  # memory-space assignment's, one chip's program
      "compiler_refused": refused,  # set when XLA would not compile it for lack of HBM (fits: false)
      "xla_cost": {k: float(v) for k, v in cost.items() if "{" not in k},  # one chip's program
  }


def format_table(r: dict) -> str:
  gib = lambda b: f"{b / (1 << 30):.2f} GiB"
  opt = lambda v, f: "n/a" if v is None else f(v)
  rows = [
      ("topology", f"{r['topology']} ({r['chips']} chips)"),
      ("mesh (data, fsdp, tensor)", str(tuple(r["mesh"]))),
      ("global batch", f"{r['global_batch']}" + (f" x {r['grad_accum']} accumulated" if r["grad_accum"] > 1 else "")),
      ("dtype / remat", f"{r['dtype']} / {r['remat']}"),
      ("attention (long sequences)", r["attention"]),
      ("libtpu flags", r.get("libtpu_flags") or "none (libtpu's defaults)"),
      ("MSA async copies", f"{r['async_copies']['count']}: {r['async_copies']['bytes'] / 1e9:.2f} GB per chip"),
      ("per-chip memory", f"{gib(r['per_chip_bytes'])} of {gib(r['hbm_bytes'])} HBM: "
                          + ("fits" if r["fits"] else "DOES NOT FIT")
                          + (" (the TPU compiler refused it; temporaries from its message)"
                             if r["compiler_refused"] else "")),
      ("  args/out/temp/aliased", " / ".join(gib(r["memory"][k]) for k in ("arguments", "outputs", "temporaries",
                                                                             "aliased"))),
      ("FLOPs/step (analytic)", f"{r['model_flops_per_step']:.3e}"),
      ("FLOPs/step (XLA)", f"{r['xla_flops_per_step']:.3e}" if r["xla_flops_per_step"] else "n/a"),
      ("Pallas kernels XLA cannot cost", _uncosted_row(r["uncosted_kernels"], r["chips"])),
      ("est. step time", opt(r["estimated_step_s"], lambda s: f"{s * 1e3:.1f} ms ({r['step_time_source']})")),
      ("est. MFU", opt(r["estimated_mfu"], lambda m: f"{100 * m:.1f}%")),
      ("est. images/s", opt(r["images_per_s"], lambda v: f"{v:.1f}")),
  ]
  w = max(len(k) for k, _ in rows)
  return "\n".join(f"{k:<{w}}  {v}" for k, v in rows) + "\n(compiler estimates for the TPU, not measured runs)"


def _uncosted_row(u: dict, chips: int) -> str:
  if not u["count"]:
    return "none"
  row = f"{u['count']}: +{u['flops'] * chips:.3e} FLOPs/step, +{u['seconds_added'] * 1e3:.1f} ms in the estimate"
  return row + (f"; not counted: {', '.join(u['unknown'])}" if u["unknown"] else "")


def main(argv) -> int:
  from absl import flags
  f = flags.FLAGS
  if len(argv) > 1:
    print(f"jaxris.aot: error: unexpected arguments {argv[1:]}", file=sys.stderr)
    return 2
  import importlib.util
  if importlib.util.find_spec("libtpu") is None:
    print(HOW_TO_GET_LIBTPU, file=sys.stderr)
    return 1
  try:
    parse_topology(f.topology)
    report = compile_step(f.config, f.topology, f.mesh)
  except BadInput as e:
    print(f"jaxris.aot: error: {e}", file=sys.stderr)
    return 2
  print(format_table(report))
  if f.json:
    with open(f.json, "w") as out:
      json.dump(report, out, indent=1)
  return 0


def _define_flags():
  from absl import flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", None, "recipe file: configs/<recipe>.py[:key=value,...]",
                                  lock_config=False)
  flags.DEFINE_string("topology", None, "TPU topology, e.g. v5e:16x16, v4:8x8x8, v5p:4x4x8, v6e:8x8")
  flags.DEFINE_string("mesh", None, "(data, fsdp, tensor) over the chips, e.g. \"(64,4,1)\"; default: the recipe's")
  flags.DEFINE_string("json", None, "also write the report to this file as one JSON object")
  flags.mark_flags_as_required(["config", "topology"])


if __name__ == "__main__":
  from absl import app

  from jaxris.configs import resolve_config_path
  sys.argv = resolve_config_path(sys.argv)
  _define_flags()
  app.run(lambda argv: sys.exit(main(argv)))
