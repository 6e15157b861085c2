#!/usr/bin/env bash
# Rebuild the recommender shipped in src/reges/shipped/redial/ from the trained ReDial run, then check the bundle.
# Usage: scripts/ship_redial.sh [run]
#   run  default runs/redial: `reges all --config configs/redial.yaml` builds it here, keeping complete stages (a
#        finished run retrains nothing). The bundle is exported from it, so the shipped recommender is that run:
#        its retriever and both experts. configs/redial.yaml trains the encoder as rank-16 LoRA adapters
#        (train_retriever.lora_rank), and the bundle carries the 2.7 MB adapter next to the bundled MiniLM instead of
#        a 90 MB encoder; serving rebuilds the tuned encoder from the two (reges.shipped).
#   NO_ITEM_EXPERT=1  ship without the Item Expert (no mine, train-item, generate).
#   CONFIG, BUNDLE, RESULT: the config (default configs/redial.yaml), the bundle folder (default
#        src/reges/shipped/redial) and the check's page (default docs/results/shipped_redial.md); scripts/reproduce.sh
#        sets them to export its own run into its own folder.
# Then scripts/shipped_check.sh retrieves dev with the bundle's files and compares it with the run, paired: float16
# embeddings and the rebuilt encoder must not change what it retrieves.
set -euo pipefail
cd "${REGES_ROOT:-$(dirname "$0")/..}"
RUN=${1:-runs/redial}
REGES=${REGES:-.venv/bin/reges}
PY=${PY:-.venv/bin/python}
export CONFIG=${CONFIG:-configs/redial.yaml}
BUNDLE=${BUNDLE:-src/reges/shipped/redial}
R=(--config "$CONFIG" --run-dir "$RUN")
if [ "${NO_ITEM_EXPERT:-0}" = 1 ]; then
  for st in data catalog index distill train-query rewrite train-retriever retrieve evaluate; do
    # a stage command refuses to redo a complete stage: skip those
    [ -f "$RUN/$st/manifest.json" ] || $REGES "$st" "${R[@]}"
  done
else
  $REGES all "${R[@]}"   # ... train-retriever, retrieve, mine, train-item, generate (alpha tuned on tune), evaluate
fi
"$PY" - "$RUN" "$BUNDLE" <<'PY'
import sys
from pathlib import Path
from reges.io import RunDir
from reges.shipped import export_run
export_run(RunDir(sys.argv[1]), Path(sys.argv[2]), Path("scripts/shipped_sources.md").read_text())
PY
REGES=$REGES PY=$PY bash scripts/shipped_check.sh "$RUN" "$BUNDLE" "$RUN-bundle-check" \
  "${RESULT:-docs/results/shipped_redial.md}"
