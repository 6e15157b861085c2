#!/usr/bin/env bash
# How the trained retriever's ReDial dev numbers move when the catalog is cleaned (catalog.clean=true: duplicate
# films folded into one item, foreign metadata cards dropped; docs/results/catalog_cleaning.md, "Dev effect").
#   bash scripts/catalog_cleaning_effect.sh [BASE]   # ~35 min on this 2-core CPU
# BASE (default runs/redial-nq, built by scripts/item_expert_served_redial.sh: configs/redial.yaml through retrieve
# without the Query Expert) is the uncleaned run; BASE-clean shares its data stage and rebuilds catalog, index,
# train-retriever (the encoder retrained on the cleaned cards), retrieve and evaluate with the overrides below, the
# whole difference to configs/redial.yaml. Both are then compared on dev, paired (every target resolved through the
# cleaned catalog's aliases by `reges evaluate`).
set -euo pipefail
cd "${REGES_ROOT:-$(dirname "$0")/..}"
BASE=${1:-runs/redial-nq}
RUN=$BASE-clean
CONFIG=configs/redial.yaml
REGES=${REGES:-.venv/bin/reges}
PY=${PY:-.venv/bin/python}
BASE_OVERRIDES=(run.threads=2 train_retriever.distill_pairs=false)  # as item_expert_served_redial.sh built BASE
[ -f "$BASE/evaluate/manifest.json" ] || "$REGES" evaluate --config "$CONFIG" --run-dir "$BASE" "${BASE_OVERRIDES[@]}"
mkdir -p "$RUN"
[ -e "$RUN/data" ] || cp -r "$BASE/data" "$RUN/data"
for stage in catalog index train-retriever retrieve evaluate; do
  [ -f "$RUN/$stage/manifest.json" ] || "$REGES" "$stage" --config "$CONFIG" --run-dir "$RUN" "${BASE_OVERRIDES[@]}" \
    catalog.clean=true "retrieve.splits=[tune,dev]"
done
"$PY" benchmarks/compare_runs.py --split dev --runs "uncleaned catalog=$BASE" "cleaned catalog=$RUN" --aliases-from "$RUN" \
  --out "${OUT:-docs/results/catalog_cleaning_effect_redial.md}"
