#!/usr/bin/env bash
# The neighbours feature as a train-retriever switch (train_retriever.neighbours: the nearest train contexts vote
# for the films recommended there), with bagged fusion weights, on both datasets (docs/results/signals.md).
#   bash scripts/neighbours_effect.sh [inspired|redial|both]   # ~35 min INSPIRED, ~40 min ReDial on this CPU
# Each variant is `scripts/retrieval_variant.sh` on a complete base run: it copies the base's stages (the encoder
# checkpoint is reused: same fingerprint), redoes train-retriever, retrieve and evaluate with the overrides below
# (the whole difference to the config). The first page of each dataset pairs every variant with the base's own
# features bagged the same way, so a row differs from its baseline by the feature alone; the second (_vs_config)
# pairs them with the config's own run (one weight search): the best configuration against today's.
#   INSPIRED: base runs/inspired (configs/inspired.yaml, with its 135M Query Expert); neighbours_cross adds ReDial's
#   ordered dialogues (the config's cross_dataset, matched by title) as voters.
#   ReDial: base runs/redial-nq (configs/redial.yaml through retrieve without the Query Expert, built by
#   scripts/item_expert_served_redial.sh); neighbours_lossy adds the lossy file's 8,193 order-free dialogues as
#   voters.
set -euo pipefail
cd "${REGES_ROOT:-$(dirname "$0")/..}"
WHICH=${1:-both}
RUNS=${RUNS:-runs}
PY=${PY:-.venv/bin/python}
OUT=${OUT:-docs/results}
BAG=(train_retriever.weight_resamples=30 run.threads=2)
NB=(train_retriever.neighbours=true)

# pages NAME CONFIG-RUN BAGGED-RUN "label=run"...: one page paired with bagging alone, one with the config's run
pages() {
  local name=$1 config=$2 bagged=$3
  shift 3
  "$PY" benchmarks/compare_runs.py --split dev --runs "bagged weights=$bagged" "$@" \
    "single weight search (the config)=$config" --out "$OUT/neighbours_effect_$name.md"
  "$PY" benchmarks/compare_runs.py --split dev --runs "the config (one weight search)=$config" \
    "bagged weights=$bagged" "$@" --out "$OUT/neighbours_effect_${name}_vs_config.md"
}

if [ "$WHICH" != redial ]; then
  export CONFIG=configs/inspired.yaml
  bash scripts/retrieval_variant.sh "$RUNS/inspired" "$RUNS/inspired-bag" "${BAG[@]}"
  bash scripts/retrieval_variant.sh "$RUNS/inspired" "$RUNS/inspired-nb-bag" "${NB[@]}" "${BAG[@]}"
  bash scripts/retrieval_variant.sh "$RUNS/inspired" "$RUNS/inspired-nbx-bag" "${NB[@]}" \
    train_retriever.neighbours_cross=true "${BAG[@]}"
  pages inspired "$RUNS/inspired" "$RUNS/inspired-bag" "+ neighbours, bagged=$RUNS/inspired-nb-bag" \
    "+ neighbours with ReDial's dialogues, bagged=$RUNS/inspired-nbx-bag"
fi
if [ "$WHICH" != inspired ]; then
  export CONFIG=configs/redial.yaml
  BASE=(train_retriever.distill_pairs=false)  # as item_expert_served_redial.sh built runs/redial-nq
  bash scripts/retrieval_variant.sh "$RUNS/redial-nq" "$RUNS/redial-nq-bag" "${BASE[@]}" "${BAG[@]}"
  bash scripts/retrieval_variant.sh "$RUNS/redial-nq" "$RUNS/redial-nq-nb-bag" "${BASE[@]}" "${NB[@]}" "${BAG[@]}"
  bash scripts/retrieval_variant.sh "$RUNS/redial-nq" "$RUNS/redial-nq-nbl-bag" "${BASE[@]}" "${NB[@]}" \
    train_retriever.neighbours_lossy=true "${BAG[@]}"
  pages redial "$RUNS/redial-nq" "$RUNS/redial-nq-bag" "+ neighbours, bagged=$RUNS/redial-nq-nb-bag" \
    "+ neighbours with the lossy dialogues, bagged=$RUNS/redial-nq-nbl-bag"
fi
