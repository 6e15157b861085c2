#!/usr/bin/env bash
# Fusion weights searched on the train split too (train_retriever.weight_examples=train+tune), as a stage switch on
# INSPIRED, alone and with the neighbours feature, each with one weight search and with bagged weights
# (docs/results/signals.md, "Weights from the train split").
#   bash scripts/train_split_weights.sh   # ~50 min on this CPU, after the runs below exist
# Each variant is `scripts/retrieval_variant.sh` on runs/inspired (configs/inspired.yaml, with its 135M Query
# Expert): it copies the base's stages (the encoder checkpoint is reused), redoes train-retriever, retrieve and
# evaluate with the overrides below (the whole difference to the config). runs/inspired-bag and
# runs/inspired-nb-bag are scripts/neighbours_effect.sh's. The first page pairs every row with the config's run;
# the second pairs each bagged row with the same features bagged on tune alone.
# First benchmarks/train_split_fusion.py on both base runs (the search on train, train + tune and per context kind,
# and each feature alone on train against tune: the fine-tuned encoder's bias): ReDial's answer comes from it alone,
# since the weights searched on train move no dev cell there, so no ReDial stage variant was built.
set -euo pipefail
cd "${REGES_ROOT:-$(dirname "$0")/..}"
RUNS=${RUNS:-runs}
PY=${PY:-.venv/bin/python}
OUT=${OUT:-docs/results}
export CONFIG=configs/inspired.yaml
"$PY" benchmarks/train_split_fusion.py --run-dir "$RUNS/inspired" --out "$OUT/train_split_fusion_inspired.md"
"$PY" benchmarks/train_split_fusion.py --run-dir "$RUNS/inspired" --neighbours \
  --out "$OUT/train_split_fusion_inspired_neighbours.md"
"$PY" benchmarks/train_split_fusion.py --run-dir "$RUNS/redial-nq" --out "$OUT/train_split_fusion_redial.md"
TT=(train_retriever.weight_examples=train+tune run.threads=2)
BAG=(train_retriever.weight_resamples=30)
NB=(train_retriever.neighbours=true)
bash scripts/retrieval_variant.sh "$RUNS/inspired" "$RUNS/inspired-tt" "${TT[@]}"
bash scripts/retrieval_variant.sh "$RUNS/inspired" "$RUNS/inspired-tt-bag" "${TT[@]}" "${BAG[@]}"
bash scripts/retrieval_variant.sh "$RUNS/inspired" "$RUNS/inspired-nb-tt" "${NB[@]}" "${TT[@]}"
bash scripts/retrieval_variant.sh "$RUNS/inspired" "$RUNS/inspired-nb-tt-bag" "${NB[@]}" "${TT[@]}" "${BAG[@]}"
"$PY" benchmarks/compare_runs.py --split dev --runs "the config (tune, one search)=$RUNS/inspired" \
  "train+tune=$RUNS/inspired-tt" "train+tune, bagged=$RUNS/inspired-tt-bag" \
  "+ neighbours, train+tune=$RUNS/inspired-nb-tt" "+ neighbours, train+tune, bagged=$RUNS/inspired-nb-tt-bag" \
  "tune, bagged=$RUNS/inspired-bag" "+ neighbours, tune, bagged=$RUNS/inspired-nb-bag" \
  --out "$OUT/train_split_weights_inspired.md"
"$PY" benchmarks/compare_runs.py --split dev --runs "tune, bagged=$RUNS/inspired-bag" \
  "train+tune, bagged=$RUNS/inspired-tt-bag" --out "$OUT/train_split_weights_inspired_vs_bagged.md"
"$PY" benchmarks/compare_runs.py --split dev --runs "+ neighbours, tune, bagged=$RUNS/inspired-nb-bag" \
  "+ neighbours, train+tune, bagged=$RUNS/inspired-nb-tt-bag" \
  --out "$OUT/train_split_weights_inspired_nb_vs_bagged.md"
