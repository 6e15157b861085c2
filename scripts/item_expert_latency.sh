#!/usr/bin/env bash
# What the Item Expert costs per served turn at 135M and at 1.5B, on both local backends (docs/results/scaling.md,
# section "Seventh session"; the Query Expert's rows come from scripts/query_student_study.sh).
#   bash scripts/item_expert_latency.sh inspired [BASE] [N-TRAIN]     # needs `bash scripts/install.sh --qwen`
# BASE (default runs/<ds>) is a run of configs/<ds>.yaml with its 135M experts (`reges all`); the 1.5B expert is
# trained on a copy of it by scripts/scaling_study_fresh_trained.sh (served setting, retrieved targets only, SFT on a
# seeded N-TRAIN mined examples, default 40: latency does not depend on what the weights learned, only on the model,
# the adapter's rank and the prompt, so a short training gives the served cost of any adapter of this shape; its
# quality rows are in scaling.md). Then benchmarks/turn_latency.py times TURNS (30) served dev turns, one dialogue
# per call, with the expert loaded through the hf backend (PEFT adapter, bf16 for 1.5B) and through llama.cpp (the
# GGUF base plus the adapter's GGUF copy, which train-item writes). generate.fusion_alpha=1.0 in every row: a tuned
# alpha of 0 would skip the expert (the recommender does not load it then), and the cost does not depend on alpha.
# THREADS (default 2). Every stage resumes; a complete stage is kept.
set -euo pipefail
cd "${REGES_ROOT:-$(dirname "$0")/..}"
DS=${1:?usage: item_expert_latency.sh inspired|redial [BASE] [N-TRAIN]}
BASE=${2:-runs/$DS}
N_TRAIN=${3:-40}
THREADS=${THREADS:-2}
TURNS=${TURNS:-30}
PY=${PY:-.venv/bin/python}
GEN=30   # dev examples the 1.5B run's generate stage scores (the expert alone): a check that it runs, not a result
RETRIEVER=config THREADS=$THREADS INSERT_MISSING=false FUSION_ALPHA=1.0 GEN_EXAMPLES=$GEN \
  bash scripts/scaling_study_fresh_trained.sh "$DS" "$BASE" sft "$N_TRAIN"
BIG=$BASE-1.5b-sft$N_TRAIN-retrieved-gen$GEN   # the run that script names
BIG_ITEM=(item_llm.model=qwen2.5-coder-1.5b-instruct item_llm.dtype=bfloat16 item_llm.batch_size=4
          mine.exclude_named=true)   # as scaling_study_fresh_trained.sh trained it
for backend in hf llamacpp; do
  "$PY" benchmarks/turn_latency.py --run-dir "$BASE" --split dev --turns "$TURNS" --threads "$THREADS" \
    --override generate.mode=rank generate.fusion_alpha=1.0 item_llm.backend=$backend \
    --out "docs/results/turn_latency_item_135m_${backend}_$DS.md"
  "$PY" benchmarks/turn_latency.py --run-dir "$BIG" --split dev --turns "$TURNS" --threads "$THREADS" \
    --override generate.mode=rank generate.fusion_alpha=1.0 item_llm.backend=$backend "${BIG_ITEM[@]}" \
    --out "docs/results/turn_latency_item_1.5b_${backend}_$DS.md"
done
# llama.cpp rank mode, all candidates in one batch against one decode per candidate (the procedure before
# 2026-12-07, kept in the benchmark as its reference), on the same served prompts
"$PY" benchmarks/rank_batching.py --run-dir "$BASE" --prompts 20 --threads "$THREADS" \
  --override mine.exclude_named=true --out "docs/results/rank_batching_135m_$DS.md"
"$PY" benchmarks/rank_batching.py --run-dir "$BIG" --prompts 20 --threads "$THREADS" \
  --override "${BIG_ITEM[@]}" --out "docs/results/rank_batching_1.5b_$DS.md"
