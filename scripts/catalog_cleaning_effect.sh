#!/usr/bin/env bash
# How the trained retriever's dev numbers move when the catalog is cleaned (catalog.clean=true: duplicate films
# folded into one item, foreign metadata cards dropped; docs/results/catalog_cleaning.md, "Dev effect").
#   bash scripts/catalog_cleaning_effect.sh [redial|inspired]   # ~35 / ~30 min on this 2-core CPU
# The base, runs/<dataset>-nq, is configs/<dataset>.yaml through evaluate without the Query Expert (its query moved
# ReDial dev R@50 by +0.002; leaving it out saves distill, train-query and rewrite), so the encoder trains on the
# dialogue pairs only (train_retriever.distill_pairs=false); it is built when missing (ReDial's is also what
# scripts/item_expert_served_redial.sh builds). BASE-clean shares its data stage and rebuilds catalog, index,
# train-retriever (the encoder retrained on the cleaned cards, every stage reading the dialogues' ids through the
# folded items' aliases), retrieve and evaluate with the overrides below, the whole difference to the config. Both
# are then compared on dev, paired, every run scored on the cleaned catalog's films (compare_runs.py --aliases-from).
set -euo pipefail
cd "${REGES_ROOT:-$(dirname "$0")/..}"
DATASET=${1:-redial}
RUNS=${RUNS:-runs}
BASE=$RUNS/$DATASET-nq
RUN=$BASE-clean
CONFIG=configs/$DATASET.yaml
REGES=${REGES:-.venv/bin/reges}
PY=${PY:-.venv/bin/python}
BASE_OVERRIDES=(run.threads=${THREADS:-2} train_retriever.distill_pairs=false)  # THREADS=1 next to another job
mkdir -p "$BASE" "$RUN"
for stage in data catalog index train-retriever retrieve evaluate; do
  [ -f "$BASE/$stage/manifest.json" ] || "$REGES" "$stage" --config "$CONFIG" --run-dir "$BASE" "${BASE_OVERRIDES[@]}"
done
[ -e "$RUN/data" ] || cp -r "$BASE/data" "$RUN/data"
for stage in catalog index train-retriever retrieve evaluate; do
  [ -f "$RUN/$stage/manifest.json" ] || "$REGES" "$stage" --config "$CONFIG" --run-dir "$RUN" "${BASE_OVERRIDES[@]}" \
    catalog.clean=true "retrieve.splits=[tune,dev]"
done
"$PY" benchmarks/compare_runs.py --split dev --runs "uncleaned catalog=$BASE" "cleaned catalog=$RUN" --aliases-from "$RUN" \
  --out "${OUT:-docs/results}/catalog_cleaning_effect_$DATASET.md"
