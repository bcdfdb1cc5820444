#!/usr/bin/env bash
# Create .venv and install DualPose with its test extras.
# Torch: a CPU build unless a GPU is present (override with DUALPOSE_TORCH_SPEC, e.g. "torch==2.13.0").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
if ! python -c "import torch" 2>/dev/null; then
  if [ -n "${DUALPOSE_TORCH_SPEC:-}" ]; then
    python -m pip install -q "$DUALPOSE_TORCH_SPEC"
  elif command -v nvidia-smi >/dev/null 2>&1; then
    python -m pip install -q "torch>=2.3"
  else
    # CPU-only machine: the CPU build (on these machines it lies on disk; elsewhere PyTorch's CPU index).
    python -m pip install -q "torch==2.13.0" \
      || python -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu
  fi
fi
python -m pip install -q -e ".[dev]"
# CPU training runs under tcmalloc when it is installed (dualpose/train/allocator.py: B trains in
# ~25 % less memory than with glibc's heap, as fast). Best effort: root on Debian/Ubuntu only.
if ! python -c "import sys; from dualpose.train.allocator import find_tcmalloc; sys.exit(find_tcmalloc() is None)" \
    && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libtcmalloc-minimal4 >/dev/null) \
    || echo "note: could not install libtcmalloc-minimal4; CPU training uses the C library's allocator"
fi
echo "installed: $(python -c 'import dualpose, torch; print("dualpose", dualpose.__version__, "torch", torch.__version__)')"
