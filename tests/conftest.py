"""Test set-up shared by every test: 8 simulated CPU devices, full fp32 matmuls, one compilation cache.

XLA_FLAGS must be set before JAX initialises its backend, hence at import time here.

XLA compiles are most of the suite's time on a 2-core CPU, and many are repeats: the same train step in
every `python -m jaxris.train` subprocess of a resume test, the same initialisers and forwards in both
xdist workers. JAX's persistent compilation cache, in one directory per test run (shared by the workers
and, through the environment, by every subprocess they start), compiles each program once. The cache
holds the compiled program, so results are the same as without it.
"""

import os
import tempfile


def _compilation_cache_dir() -> str:
  """One directory per pytest run. Under xdist the controller imports this file first and its workers
  inherit the directory it made; a worker started without it (its run id set) names one by the run id."""
  run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID")
  if run_id:
    return os.path.join(tempfile.gettempdir(), f"jaxris-tests-xla-cache-{run_id}")
  return tempfile.mkdtemp(prefix="jaxris-tests-xla-cache-")


os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _compilation_cache_dir())
# Every compile, even the sub-second ones: eager initialisers compile one small program per shape.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# torch/torchvision (triton) segfault when imported after TensorFlow here; the reverse order is fine.
import torch  # noqa: E402,F401
import torchvision  # noqa: E402,F401

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
