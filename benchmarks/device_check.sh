#!/usr/bin/env bash
# jaxris on one GPU against the official PyTorch code, same GPU, same run: at most 8 minutes.
#
#   bash benchmarks/device_check.sh            # on a fresh GPU machine, from the repository root
#   bash benchmarks/device_check.sh --smoke    # tiny sizes (any machine, CPU too): checks the script
#   SKIP_INSTALL=1 bash benchmarks/device_check.sh   # reuse what is installed
#
# Installs what it needs from the repository (jaxris with the pinned constraints, PyTorch from the
# convert extra, segment_anything for the official SAM and DIT reference, and jax's CUDA 13 plugin
# of the same jax version), then runs benchmarks/device_check.py: an L-DIT ViT-B 512 bf16 train
# step (images/s, MFU) and a SAM ViT-H encoder forward, each against the official PyTorch code,
# printed as one table with the JAX/PyTorch ratios. Other arguments go to device_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
START=$SECONDS
BUDGET=${DEVICE_CHECK_BUDGET:-480}  # seconds for the whole script, installs included

if [[ -z "${SKIP_INSTALL:-}" ]]; then
  PIP="python -m pip install --quiet --disable-pip-version-check"
  # jaxris and its pinned dependency set; torch (the convert extra) and the official SAM code.
  $PIP -c constraints.txt ".[convert]" "segment-anything==1.0"
  if command -v nvidia-smi >/dev/null 2>&1; then
    # GPU jax: the CUDA 13 plugin of the pinned jax version, with its CUDA libraries from PyPI
    # (not constrained: its nvidia-* wheels need not match the CPU lock's).
    JAX_VERSION=$(python -c "import jax; print(jax.__version__)")
    $PIP "jax[cuda13]==${JAX_VERSION}"
  fi
  echo "# installed in $((SECONDS - START)) s"
fi

command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
LEFT=$((BUDGET - (SECONDS - START)))
if (( LEFT < 60 )); then
  echo "device_check: only ${LEFT} s of the ${BUDGET} s budget left after installing; not running" >&2
  exit 1
fi
# XLA must not take 75% of the GPU up front: PyTorch shares it in the same process.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
exec timeout --signal=INT "${LEFT}" python benchmarks/device_check.py "$@"
