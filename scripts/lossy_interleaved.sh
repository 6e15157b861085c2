#!/usr/bin/env bash
# The lossy ReDial file's dialogues as ordered training examples (train_retriever.lossy_pairs_from=interleaved: each
# dialogue's messages in a guessed speaking order, cut at each recommendation; docs/results/signals.md, "The lossy
# dialogues in a guessed order"), next to ReDial's base run without them.
#   bash scripts/lossy_interleaved.sh   # ~1.5 h on this CPU, once scripts/item_expert_served_redial.sh has built
#                                       # runs/redial-nq (configs/redial.yaml through retrieve, no Query Expert)
#                                       # and scripts/neighbours_effect.sh runs/redial-nq-nbl-bag (the last row)
# First benchmarks/lossy_order.py: how close the guessed order comes to the true one on the clean train dialogues.
# The variant is a `scripts/retrieval_variant.sh` copy of runs/redial-nq; the overrides below are the whole
# difference to configs/redial.yaml: distill_pairs=false as runs/redial-nq was built, then 16,000 of the 31,766
# interleaved pairs (a seeded sample; 21,289 pairs in all against the base's 5,289, about 1 h of fine-tuning).
set -euo pipefail
cd "${REGES_ROOT:-$(dirname "$0")/..}"
RUNS=${RUNS:-runs}
PY=${PY:-.venv/bin/python}
OUT=${OUT:-docs/results}
export CONFIG=configs/redial.yaml
"$PY" benchmarks/lossy_order.py --config "$CONFIG" --run-dir "$RUNS/redial-nq" --out "$OUT/lossy_order.md"
LI=(train_retriever.distill_pairs=false train_retriever.lossy_pairs=16000 train_retriever.lossy_pairs_from=interleaved)
bash scripts/retrieval_variant.sh "$RUNS/redial-nq" "$RUNS/redial-nq-lossyint" "${LI[@]}" run.threads=2
# the same encoder (reused: its fingerprint matches), weights bagged, and with the neighbours feature as
# scripts/neighbours_effect.sh's best ReDial variant (the lossy dialogues voting too)
bash scripts/retrieval_variant.sh "$RUNS/redial-nq-lossyint" "$RUNS/redial-nq-lossyint-bag" "${LI[@]}" \
  train_retriever.weight_resamples=30
bash scripts/retrieval_variant.sh "$RUNS/redial-nq-lossyint" "$RUNS/redial-nq-lossyint-nbl-bag" "${LI[@]}" \
  train_retriever.neighbours=true train_retriever.neighbours_lossy=true train_retriever.weight_resamples=30
"$PY" benchmarks/compare_runs.py --split dev --runs "base (runs/redial-nq)=$RUNS/redial-nq" \
  "+ 16,000 interleaved lossy pairs=$RUNS/redial-nq-lossyint" \
  "+ interleaved pairs, bagged=$RUNS/redial-nq-lossyint-bag" \
  "+ interleaved pairs, neighbours with the lossy dialogues, bagged=$RUNS/redial-nq-lossyint-nbl-bag" \
  "neighbours with the lossy dialogues, bagged (neighbours_effect.sh)=$RUNS/redial-nq-nbl-bag" \
  --out "$OUT/lossy_interleaved_redial.md"
