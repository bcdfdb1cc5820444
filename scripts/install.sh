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
echo "installed: $(python -c 'import dualpose, torch; print("dualpose", dualpose.__version__, "torch", torch.__version__)')"
