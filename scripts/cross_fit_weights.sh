#!/usr/bin/env bash
# Fusion weights searched on train + tune with the train examples' dense feature cross-fitted
# (train_retriever.cross_fit_folds=2: two more encoders, each fine-tuned without half of the train dialogues, score
# the half they never saw), on INSPIRED (docs/results/signals.md, "The dense feature cross-fitted, and a learned
# reranker").
#   bash scripts/cross_fit_weights.sh   # ~1.5 h on this CPU, once scripts/train_split_weights.sh has run
# Then benchmarks/learned_fusion.py (a non-linear reranker learned on the train split) on INSPIRED's cross-fitted run
# and on ReDial (runs/redial-nq, built by scripts/item_expert_served_redial.sh).
# Each run is a `scripts/retrieval_variant.sh` copy (configs/inspired.yaml, the overrides below are the whole
# difference) of the runs that script built without cross-fitting, so every page pairs a run with its twin: the same
# features, the same train + tune examples, only the train rows' dense_dialogue differs. No Query Expert query
# (train_retriever.query_feature=false), for the reason train_split_weights.sh gives. The second run starts from
# the first, so the fold encoders (train-retriever/checkpoints/fold-k) are trained once and reused.
set -euo pipefail
cd "${REGES_ROOT:-$(dirname "$0")/..}"
RUNS=${RUNS:-runs}
PY=${PY:-.venv/bin/python}
OUT=${OUT:-docs/results}
export CONFIG=configs/inspired.yaml
NOQ=(train_retriever.query_feature=false run.threads=2)
TT=(train_retriever.weight_examples=train+tune)
CF=(train_retriever.cross_fit_folds=2)
NB=(train_retriever.neighbours=true)
bash scripts/retrieval_variant.sh "$RUNS/inspired" "$RUNS/inspired-noq-tt-cf" "${NOQ[@]}" "${TT[@]}" "${CF[@]}"
bash scripts/retrieval_variant.sh "$RUNS/inspired-noq-tt-cf" "$RUNS/inspired-noq-nb-tt-cf" "${NOQ[@]}" "${NB[@]}" \
  "${TT[@]}" "${CF[@]}"
bash scripts/retrieval_variant.sh "$RUNS/inspired-noq-tt-cf" "$RUNS/inspired-noq-nb-tt-cf-bag" "${NOQ[@]}" \
  "${NB[@]}" "${TT[@]}" "${CF[@]}" train_retriever.weight_resamples=30
# beyond a linear weight set: a gradient-boosted reranker of the fused top 100 learned on train (+ tune), on the
# cross-fitted INSPIRED run (honest train features) and on ReDial's run without the Query Expert (whose dense
# feature is nearly unbiased on train: +0.016, train_split_fusion_redial.md)
"$PY" benchmarks/learned_fusion.py --run-dir "$RUNS/inspired-noq-tt-cf" --cross-fit \
  --out "$OUT/learned_fusion_inspired_cross_fit.md"
"$PY" benchmarks/learned_fusion.py --run-dir "$RUNS/redial-nq" --out "$OUT/learned_fusion_redial.md"
# five folds: each fold's encoder sees 80 % of the train dialogues instead of half, nearer the run's own encoder,
# so the train rows' dense scores are nearer tune's and dev's in distribution
bash scripts/retrieval_variant.sh "$RUNS/inspired" "$RUNS/inspired-noq-tt-cf5" "${NOQ[@]}" "${TT[@]}" \
  train_retriever.cross_fit_folds=5
"$PY" benchmarks/learned_fusion.py --run-dir "$RUNS/inspired-noq-tt-cf5" --cross-fit \
  --out "$OUT/learned_fusion_inspired_cross_fit5.md"
"$PY" benchmarks/compare_runs.py --split dev --runs "train+tune=$RUNS/inspired-noq-tt" \
  "train+tune, cross-fitted=$RUNS/inspired-noq-tt-cf" "train+tune, cross-fitted, 5 folds=$RUNS/inspired-noq-tt-cf5" \
  "+ neighbours, train+tune=$RUNS/inspired-noq-nb-tt" \
  "+ neighbours, train+tune, cross-fitted=$RUNS/inspired-noq-nb-tt-cf" \
  "+ neighbours, train+tune, bagged=$RUNS/inspired-noq-nb-tt-bag" \
  "+ neighbours, train+tune, cross-fitted, bagged=$RUNS/inspired-noq-nb-tt-cf-bag" \
  --out "$OUT/cross_fit_weights_inspired.md"
"$PY" benchmarks/compare_runs.py --split dev --runs "the config (query, tune)=$RUNS/inspired" \
  "train+tune, cross-fitted=$RUNS/inspired-noq-tt-cf" "train+tune, cross-fitted, 5 folds=$RUNS/inspired-noq-tt-cf5" \
  "+ neighbours, train+tune, cross-fitted=$RUNS/inspired-noq-nb-tt-cf" \
  "+ neighbours, train+tune, cross-fitted, bagged=$RUNS/inspired-noq-nb-tt-cf-bag" \
  "+ neighbours, bagged on tune (neighbours_effect.sh)=$RUNS/inspired-nb-bag" \
  --out "$OUT/cross_fit_weights_inspired_vs_config.md"
