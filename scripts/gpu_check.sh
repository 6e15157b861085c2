#!/usr/bin/env bash
# Run reges's CUDA code paths once with tiny random models (LoRA step, rank, constrained decoding, encoder
# fine-tuning, the memory estimate, 2-GPU data parallelism when there are 2 GPUs) and write the log to
# docs/results/gpu_check.md. Under 5 minutes, nothing downloaded. Without CUDA it refuses (status 2) and leaves
# the page as it is. Usage:
#   bash scripts/gpu_check.sh                 # all checks
#   bash scripts/gpu_check.sh --only rank     # some of them
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec timeout 300 "$PY" benchmarks/gpu_check.py "$@"
