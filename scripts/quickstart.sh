#!/usr/bin/env bash
# Set up and run the whole pipeline end to end on the embedded synthetic data set:
# prepare -> clips -> masked inputs -> CRL pretraining -> finetuning -> evaluation.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
.venv/bin/dualpose run "$@"
echo "Report: artifacts/eval/synthetic/report.md"
