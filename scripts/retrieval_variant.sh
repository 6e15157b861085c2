#!/usr/bin/env bash
# One retrieval variant of a complete run: RUN shares data .. rewrite of BASE (copied, never rebuilt), and
# train-retriever, retrieve and evaluate are redone with the overrides given, which are the whole difference to
# CONFIG. The encoder checkpoint is copied with train-retriever and reused when the overrides do not change what
# the encoder is trained on (train-retriever's fingerprint), so a fusion-feature variant costs minutes.
# The retrieval ablation of docs/results/signals.md is a list of such commands, e.g.:
#   bash scripts/retrieval_variant.sh runs/inspired-nocross runs/inspired-content train_retriever.content=true
# CONFIG (default configs/inspired.yaml). Each step is skipped when its manifest is newer than the one before it, so
# an interrupted variant resumes; delete RUN to redo it.
set -euo pipefail
cd "${REGES_ROOT:-$(dirname "$0")/..}"
BASE=${1:?usage: retrieval_variant.sh BASE-RUN RUN [section.key=value ...]}
RUN=${2:?usage: retrieval_variant.sh BASE-RUN RUN [section.key=value ...]}
shift 2
REGES=${REGES:-.venv/bin/reges}
CONFIG=${CONFIG:-configs/inspired.yaml}
mkdir -p "$RUN"
for stage in data catalog index distill train-query rewrite train-retriever retrieve; do
  if [ -e "$BASE/$stage" ] && [ ! -e "$RUN/$stage" ]; then cp -r "$BASE/$stage" "$RUN/$stage"; fi
done
[ -f "$RUN/config.yaml" ] || cp "$BASE/config.yaml" "$RUN/config.yaml"
[ -f "$RUN/variant.done" ] || {
  "$REGES" train-retriever --config "$CONFIG" --run-dir "$RUN" run.threads=1 "$@" run.overwrite=true
  touch "$RUN/variant.done"
}
prev=train-retriever
for stage in retrieve evaluate; do
  if [ ! -f "$RUN/$stage/manifest.json" ] || [ "$RUN/$prev/manifest.json" -nt "$RUN/$stage/manifest.json" ]; then
    "$REGES" "$stage" --config "$CONFIG" --run-dir "$RUN" run.threads=1 "$@" run.overwrite=true
  fi
  prev=$stage
done
