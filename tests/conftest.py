"""Test set-up shared by every test: 8 simulated CPU devices and full fp32 matmuls.

XLA_FLAGS must be set before JAX initialises its backend, hence at import time here.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# torch/torchvision (triton) segfault when imported after TensorFlow here; the reverse order is fine.
import torch  # noqa: E402,F401
import torchvision  # noqa: E402,F401

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
