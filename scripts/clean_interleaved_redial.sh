#!/usr/bin/env bash
# ReDial's candidate retriever: the cleaned catalog (every stage reading folded ids through its aliases) with the
# lossy dialogues' interleaved pairs, next to the uncleaned base and the cleaned run (docs/results/signals.md,
# "A cleaned catalog with the interleaved pairs").
#   bash scripts/clean_interleaved_redial.sh   # ~70 min on this 2-core CPU, after
#                                              # `bash scripts/catalog_cleaning_effect.sh redial` (~35 min) built
#                                              # runs/redial-nq (the base) and runs/redial-nq-clean
# Each variant is a `scripts/retrieval_variant.sh` copy of runs/redial-nq-clean; the overrides below are the whole
# difference to configs/redial.yaml: the base's (no Query Expert, so no distill pairs), catalog.clean=true, and
# 16,000 of the 31,766 interleaved lossy pairs as scripts/lossy_interleaved.sh (bagged weights added nothing there).
# Every run is scored on the cleaned catalog's films (compare_runs.py --aliases-from).
set -euo pipefail
cd "${REGES_ROOT:-$(dirname "$0")/..}"
RUNS=${RUNS:-runs}
PY=${PY:-.venv/bin/python}
export CONFIG=configs/redial.yaml
for run in "$RUNS/redial-nq" "$RUNS/redial-nq-clean"; do
  [ -f "$run/evaluate/manifest.json" ] || { echo "$run is missing: run scripts/catalog_cleaning_effect.sh redial" >&2; exit 1; }
done
V=(catalog.clean=true "retrieve.splits=[tune,dev]" train_retriever.distill_pairs=false train_retriever.lossy_pairs=16000
   train_retriever.lossy_pairs_from=interleaved)
bash scripts/retrieval_variant.sh "$RUNS/redial-nq-clean" "$RUNS/redial-nq-clean-lossyint" "${V[@]}" run.threads=2
"$PY" benchmarks/compare_runs.py --split dev --runs "base (uncleaned catalog)=$RUNS/redial-nq" \
  "cleaned catalog=$RUNS/redial-nq-clean" \
  "cleaned + 16,000 interleaved lossy pairs=$RUNS/redial-nq-clean-lossyint" \
  --aliases-from "$RUNS/redial-nq-clean" --out "${OUT:-docs/results}/clean_interleaved_redial.md"
