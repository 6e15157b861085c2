#!/usr/bin/env bash
# Fusion weights searched on the train split too (train_retriever.weight_examples=train+tune), as a stage switch on
# INSPIRED, alone and with the neighbours feature (docs/results/signals.md, "Weights from the train split").
#   bash scripts/train_split_weights.sh   # ~40 min on this CPU, once runs/inspired, runs/redial-nq and
#   runs/inspired-nb-bag (scripts/neighbours_effect.sh) exist
# First benchmarks/train_split_fusion.py on both base runs (the search on train, train + tune and per context kind,
# and each feature alone on train against tune: the fine-tuned encoder's bias): ReDial's answer comes from it alone,
# since the weights searched on train move no dev cell there, so no ReDial stage variant was built.
# Then `scripts/retrieval_variant.sh` copies of runs/inspired (configs/inspired.yaml, with its 135M Query Expert):
# each copies the base's stages (the encoder checkpoint is reused), redoes train-retriever, retrieve and evaluate
# with the overrides below (the whole difference to the config). All five leave the Query Expert's query out
# (train_retriever.query_feature=false): the switch searches the no-query weight set, which serves only examples
# without a query, and the config's run has a query for every dev example (the train split has none to search
# the with-query set on). The first page pairs each row with the first (one search on tune, no query): a 2 x 2 of
# neighbours x the examples searched on. The second pairs the train+tune rows (the last also with weights bagged
# over 30 resamples of the train and tune dialogues) with the config's own run (its
# query, one search on tune) and with neighbours_effect.sh's best INSPIRED run (runs/inspired-nb-bag).
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
NOQ=(train_retriever.query_feature=false run.threads=2)
TT=(train_retriever.weight_examples=train+tune)
NB=(train_retriever.neighbours=true)
bash scripts/retrieval_variant.sh "$RUNS/inspired" "$RUNS/inspired-noq" "${NOQ[@]}"
bash scripts/retrieval_variant.sh "$RUNS/inspired" "$RUNS/inspired-noq-tt" "${NOQ[@]}" "${TT[@]}"
bash scripts/retrieval_variant.sh "$RUNS/inspired" "$RUNS/inspired-noq-nb" "${NOQ[@]}" "${NB[@]}"
bash scripts/retrieval_variant.sh "$RUNS/inspired" "$RUNS/inspired-noq-nb-tt" "${NOQ[@]}" "${NB[@]}" "${TT[@]}"
bash scripts/retrieval_variant.sh "$RUNS/inspired" "$RUNS/inspired-noq-nb-tt-bag" "${NOQ[@]}" "${NB[@]}" "${TT[@]}" \
  train_retriever.weight_resamples=30
"$PY" benchmarks/compare_runs.py --split dev --runs "no query, tune (one search)=$RUNS/inspired-noq" \
  "no query, train+tune=$RUNS/inspired-noq-tt" "no query, + neighbours, tune=$RUNS/inspired-noq-nb" \
  "no query, + neighbours, train+tune=$RUNS/inspired-noq-nb-tt" "the config (query, tune)=$RUNS/inspired" \
  --out "$OUT/train_split_weights_inspired.md"
"$PY" benchmarks/compare_runs.py --split dev --runs "the config (query, tune)=$RUNS/inspired" \
  "no query, train+tune=$RUNS/inspired-noq-tt" "no query, + neighbours, train+tune=$RUNS/inspired-noq-nb-tt" \
  "no query, + neighbours, train+tune, bagged=$RUNS/inspired-noq-nb-tt-bag" \
  "+ neighbours, bagged on tune (neighbours_effect.sh)=$RUNS/inspired-nb-bag" \
  --out "$OUT/train_split_weights_inspired_vs_config.md"
