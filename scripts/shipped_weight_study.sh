#!/usr/bin/env bash
# The fusion-weight study (benchmarks/weight_stability.py) on the shipped ReDial retriever, without its training run
# (1 h 40 min to rebuild): the bundle's catalog and train-retriever stages next to a data stage built here from the
# bundle's own config (the same files and seed, so the same tune and dev splits; the page checks it: the weight
# search redone on tune must give the bundle's weights exactly). The bundle carries no rewritten queries, so the
# study uses its no-query weight set (the Query Expert adds nothing measurable to the fusion: scaling.md).
#   bash scripts/shipped_weight_study.sh [RUN]     # RUN default runs/redial-shipped; ~5 min on this CPU
set -euo pipefail
cd "${REGES_ROOT:-$(dirname "$0")/..}"
RUN=${1:-runs/redial-shipped}
BUNDLE=${BUNDLE:-src/reges/shipped/redial}
REGES=${REGES:-.venv/bin/reges}
PY=${PY:-.venv/bin/python}
mkdir -p "$RUN"
[ -f "$RUN/data/manifest.json" ] || "$REGES" data --config "$BUNDLE/config.yaml" --run-dir "$RUN"
for stage in catalog train-retriever; do [ -e "$RUN/$stage" ] || cp -r "$BUNDLE/$stage" "$RUN/$stage"; done
cp "$BUNDLE/config.yaml" "$RUN/config.yaml"
"$PY" benchmarks/weight_stability.py --run-dir "$RUN" --weights no_query --resamples 30 \
  --out "${OUT:-docs/results/weight_stability_redial_shipped.md}"
