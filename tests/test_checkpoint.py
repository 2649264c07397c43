"""jaxris.checkpoint: a train state written on the 8 simulated CPU devices reads back equal."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxris.checkpoint import Checkpointer


def _state(mesh):
  replicated, split = NamedSharding(mesh, P()), NamedSharding(mesh, P("fsdp"))
  rng = np.random.default_rng(0)
  return {"params.w": jax.device_put(jnp.asarray(rng.normal(size=(16, 3)), jnp.float32), split),
          "params.b": jax.device_put(jnp.asarray(rng.normal(size=(5,)), jnp.float32), replicated),
          "step": jax.device_put(jnp.asarray(7, jnp.int32), replicated)}


def test_replicated_and_split_arrays_read_back_equal(tmp_path):
  mesh = jax.make_mesh((2, 4), ("data", "fsdp"))
  state = _state(mesh)
  ckpt = Checkpointer(str(tmp_path))
  ckpt.save(3, state, wait=True)
  abstract = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=v.sharding) for k, v in state.items()}
  restored = ckpt.restore(ckpt.latest_step(), abstract)
  ckpt.close()
  assert ckpt.latest_step() == 3
  for k, v in state.items():
    assert restored[k].sharding == v.sharding, k
    np.testing.assert_array_equal(np.asarray(restored[k]), np.asarray(v), err_msg=k)


def test_a_cpu_save_cuts_no_replica_slices(tmp_path, monkeypatch):
  """Orbax's default splits each replicated array between its replicas with one eager slice per part
  (thousands of dispatches per save of a CPU run); on CPU each array is copied off whole."""
  slices = []
  real = jax.lax.slice_in_dim
  monkeypatch.setattr(jax.lax, "slice_in_dim", lambda *a, **k: slices.append(a[0].shape) or real(*a, **k))
  ckpt = Checkpointer(str(tmp_path))
  ckpt.save(1, _state(jax.make_mesh((2, 4), ("data", "fsdp"))), wait=True)
  ckpt.close()
  assert slices == []
