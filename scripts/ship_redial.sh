#!/usr/bin/env bash
# Rebuild the recommender shipped in src/reges/shipped/redial/ from a trained ReDial run.
# Usage: scripts/ship_redial.sh [trained-run]   (default runs/redial, made by `reges all --config configs/redial.yaml`)
# The shipped fusion uses the bundled MiniLM (a fine-tuned encoder is 90 MB), so train-retriever is redone with
# train_retriever.finetune=false in runs/redial-ship, which links the trained run's other stages. The Item Expert is
# left out: its pick is worse than the retriever's top-1 (docs/results/item_expert.md); link train-item to ship it.
set -euo pipefail
RUN=${1:-runs/redial}
S=runs/redial-ship
REGES=${REGES:-.venv/bin/reges}
mkdir -p $S
for st in data catalog index distill train-query rewrite; do [ -e $S/$st ] || ln -s "$(realpath $RUN/$st)" $S/$st; done
R="--config configs/redial.yaml --run-dir $S"
$REGES train-retriever $R train_retriever.finetune=false
$REGES retrieve $R 'retrieve.splits=[dev]'   # dev numbers of the shipped variant
$REGES evaluate $R
.venv/bin/python - <<'PY'
from pathlib import Path
from reges.io import RunDir
from reges.shipped import SHIPPED_ROOT, export_run
export_run(RunDir("runs/redial-ship"), SHIPPED_ROOT / "redial", Path("scripts/shipped_sources.md").read_text())
PY
