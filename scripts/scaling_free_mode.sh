#!/usr/bin/env bash
# Free-mode hallucination of a trained Item Expert (docs/results/scaling.md): the expert writes a title with greedy
# decoding (generate.mode=free) and `reges evaluate` counts the answers that name no candidate. TRAINED is a run of
# scripts/scaling_study_fresh_trained.sh; its stages up to train-item are copied (never retrained) into
# TRAINED-free, and generate scores a seeded sample of N dev examples (default 60) with the overrides below, which
# are the whole difference to configs/<ds>.yaml (those of the training run, so the copied stages stay current).
#   bash scripts/scaling_free_mode.sh inspired runs/inspired-fresh-1.5b-sftall-retrieved-gen0 [N]
# N=0: every dev example. RUN: the free-mode run (default TRAINED-free; another N needs another RUN, since a complete
# generate stage is kept).
set -euo pipefail
cd "${REGES_ROOT:-$(dirname "$0")/..}"
DS=${1:?usage: scaling_free_mode.sh inspired|redial TRAINED-RUN [N]}
TRAINED=${2:?TRAINED-RUN: a run of scripts/scaling_study_fresh_trained.sh}
N=${3:-60}
REGES=${REGES:-.venv/bin/reges}
RUN=${RUN:-$TRAINED-free}
AS_MEASURED=(train_retriever.people=false train_retriever.cross_dataset=null train_retriever.lora_rank=0
             train_retriever.lr=5e-5)
# the settings of `INSERT_MISSING=false scripts/scaling_study_fresh_trained.sh ... sft all` (the trained run)
OVERRIDES=(mine.exclude_named=true generate.mode=free generate.max_examples=$N run.threads=1
           item_llm.model=qwen2.5-coder-1.5b-instruct item_llm.dtype=bfloat16 item_llm.batch_size=4
           train_item.objective=sft train_item.max_examples=0 train_item.batch_size=1 train_item.grad_accum=8
           train_item.save_every_steps=2 mine.insert_missing=false "${AS_MEASURED[@]}")
mkdir -p "$RUN"
for stage in data catalog index distill train-query rewrite train-retriever retrieve mine train-item; do
  if [ ! -e "$RUN/$stage" ]; then cp -r "$TRAINED/$stage" "$RUN/$stage"; fi
done
[ -f "$RUN/config.yaml" ] || cp "$TRAINED/config.yaml" "$RUN/config.yaml"
for stage in generate evaluate; do
  [ -f "$RUN/$stage/manifest.json" ] || "$REGES" "$stage" --config "configs/$DS.yaml" --run-dir "$RUN" "${OVERRIDES[@]}"
done
