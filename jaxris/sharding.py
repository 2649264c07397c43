"""Device mesh, and logical axis names -> mesh axes: how every array of the train state is split.

Mesh axes ('data', 'fsdp', 'tensor'), as in MaxText's vocabulary:

* data:   batch split, parameters replicated;
* fsdp:   batch split *and* parameters split (ZeRO-3 style: XLA all-gathers weights before use and
          reduce-scatters gradients);
* tensor: Megatron-style split of attention/MLP matmuls: the first Linear of a pair splits its
          output features, the second its input features, so the pair needs one reduction.

Every parameter is created with logical axis names, one per dimension (jaxris/models/layers.py:
``embed``, ``mlp``, ``qkv``, ``heads``, ``kv``, ``vocab``, ``conv_in``, ``conv_out``, ``norm``).
A recipe's ``sharding_rules`` map each logical name to a mesh axis (or a tuple of them, or None);
`param_sharding` turns (logical names, shape, mesh, rules) into a PartitionSpec. A dimension the
mesh axis does not divide stays whole, and that is *reported* (`Plan.fallbacks`), as is a parameter
created without names (`Plan.unnamed`): nothing is replicated silently. One device is a mesh of
shape (1, 1, 1).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxris.models.functional import path_name

AXES = ("data", "fsdp", "tensor")
BATCH = ("data", "fsdp")  # the batch is split over both data-parallel axes

# The shared default of every recipe's `sharding_rules` (configs/common.py repeats it as data).
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("embed", "fsdp"),      # model width: ZeRO-3 split of every weight that has one
    ("mlp", "tensor"),      # MLP hidden: fc1's output, fc2's input
    ("qkv", "tensor"),      # attention projections' output (heads x head_dim)
    ("heads", "tensor"),    # the output projection's input (heads x head_dim)
    ("kv", None),           # per-head features (relative-position tables)
    ("vocab", "tensor"),    # embedding table rows
    ("conv_in", "fsdp"),
    ("conv_out", "tensor"),
    ("norm", None),         # LayerNorm scale/bias: small, replicated
)


def make_mesh(shape: Sequence[int] = (-1, 1, 1), devices=None) -> Mesh:
  """A mesh over the given (default: all) devices; one -1 in `shape` takes the remaining devices."""
  devices = np.asarray(jax.devices() if devices is None else devices)
  shape = list(shape)
  if shape.count(-1) > 1:
    raise ValueError(f"mesh shape {shape}: at most one -1")
  if -1 in shape:
    rest = int(np.prod([s for s in shape if s != -1]))
    if devices.size % rest:
      raise ValueError(f"mesh shape {shape} does not divide {devices.size} devices")
    shape[shape.index(-1)] = devices.size // rest
  need = int(np.prod(shape))
  if need > devices.size:
    raise ValueError(f"mesh shape {tuple(shape)} needs {need} devices, {devices.size} are available")
  return Mesh(devices.flat[:need].reshape(shape), AXES)  # a smaller mesh uses the first devices


# --- Logical names of a model's parameters.

def logical_axes(graphdef, params: Mapping[str, object], rest=None) -> dict[str, tuple | None]:
  """{dotted name: logical axis names (None: created without)} of `split_params`' parameters.

  The names live in the parameters' metadata, which the graphdef keeps; merging plain values
  (arrays or ShapeDtypeStructs, nothing is computed) brings it back.
  """
  path = lambda name: tuple(int(p) if p.isdigit() else p for p in name.split("."))
  state = nnx.from_flat_state({path(k): v for k, v in params.items()})
  model = nnx.merge(graphdef, state, *(() if rest is None else (rest,)))
  return {path_name(k): _names(v) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def model_plan(model: nnx.Module, mesh, rules=None) -> "Plan":
  """`plan` of a model's trainable parameters, read off the model (an abstract one from nnx.eval_shape too)."""
  flat = [(path_name(k), v) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))]
  return plan({k: _names(v) for k, v in flat}, {k: tuple(v.get_value().shape) for k, v in flat}, mesh,
              DEFAULT_RULES if rules is None else rules)


def _names(var) -> tuple | None:
  names = var.get_metadata().get("out_sharding")
  return tuple(names) if names is not None else None


# --- Logical names -> PartitionSpec.

@dataclasses.dataclass
class Plan:
  """The shardings of a parameter dict and what could not be applied as the rules ask."""
  shardings: dict[str, NamedSharding]
  specs: dict[str, P]
  fallbacks: list[str]   # "name: dim d (size n, logical 'x') not split over 'tensor' (k): reason"
  unnamed: list[str]     # parameters created without logical names (replicated)

  def report(self) -> str:
    lines = [f"replicated, created without logical axis names: {n}" for n in self.unnamed]
    return "\n".join(lines + self.fallbacks)


def rules_dict(rules) -> dict[str, tuple[str, ...]]:
  """(logical, mesh axis | (axes...) | None) pairs -> {logical: (mesh axes...)}; a name twice is an error."""
  out = {}
  for logical, target in rules:
    if logical in out:
      raise ValueError(f"sharding_rules name {logical!r} twice")
    target = () if target is None else (target,) if isinstance(target, str) else tuple(target)
    bad = [a for a in target if a not in AXES]
    if bad:
      raise ValueError(f"sharding_rules {logical!r} -> {bad}: mesh axes are {AXES}")
    out[logical] = target
  return out


def param_spec(names: Sequence[str | None], shape: Sequence[int], mesh, rules=DEFAULT_RULES,
               what: str = "") -> tuple[P, list[str]]:
  """PartitionSpec of one array from its logical names, and the notes on dimensions left whole.

  A mesh axis of size 1 is dropped without a note (nothing to split); a mesh axis that does not
  divide its dimension, or that an earlier dimension already uses, leaves the dimension whole
  and adds a note. An unknown logical name is an error (a typo would otherwise replicate).
  """
  table = rules_dict(rules)
  if len(names) != len(shape):
    raise ValueError(f"{what}: {len(names)} logical names {tuple(names)} for shape {tuple(shape)}")
  sizes = dict(mesh.shape)
  used, out, notes = set(), [], []
  for d, (name, dim) in enumerate(zip(names, shape)):
    if name is None:
      out.append(None)
      continue
    if name not in table:
      raise ValueError(f"{what}: logical axis {name!r} has no sharding rule; rules name {sorted(table)}")
    axes = tuple(a for a in table[name] if sizes.get(a, 1) > 1)
    if not axes:
      out.append(None)
      continue
    size = int(np.prod([sizes[a] for a in axes]))
    why = ("already used by another dimension" if used & set(axes)
           else f"{dim} is not divisible by {size}" if dim % size else "")
    if why:
      notes.append(f"{what}: dim {d} (size {dim}, logical {name!r}) not split over {axes}: {why}")
      out.append(None)
      continue
    used |= set(axes)
    out.append(axes[0] if len(axes) == 1 else axes)
  return P(*out), notes


def plan(axes: Mapping[str, tuple | None], shapes: Mapping[str, Sequence[int]], mesh, rules=DEFAULT_RULES) -> Plan:
  """Shardings of every parameter (`axes` from `logical_axes`, `shapes` name -> shape)."""
  specs, fallbacks, unnamed = {}, [], []
  for name, shape in shapes.items():
    names = axes.get(name)
    if names is None:
      unnamed.append(name)
      specs[name] = P()
      continue
    specs[name], notes = param_spec(names, tuple(shape), mesh, rules, what=name)
    fallbacks += notes
  return Plan({k: NamedSharding(mesh, s) for k, s in specs.items()}, specs, fallbacks, unnamed)


def state_shardings(state, param_plan: Plan, mesh):
  """Shardings of a train state: every leaf under a parameter's name (the parameters, the EMA,
  the optimizer's moments) takes that parameter's spec; other leaves (counts, the step) are
  replicated."""
  def one(path, leaf):
    for key in reversed(path):
      name = getattr(key, "key", None)
      if isinstance(name, str) and name in param_plan.specs:
        spec = param_plan.specs[name]
        if len(spec) <= len(np.shape(leaf)):
          return NamedSharding(mesh, spec)
    return NamedSharding(mesh, P())
  return jax.tree_util.tree_map_with_path(one, state)


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This process's part of the batch -> global arrays split over (data, fsdp)."""
  return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, np.ndim(v)), np.asarray(v))
          for k, v in batch.items()}
