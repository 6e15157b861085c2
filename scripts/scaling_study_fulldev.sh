#!/usr/bin/env bash
# The untuned and the retrieved-target SFT 1.5B Item Experts alone (alpha 1) on the whole INSPIRED dev split (283
# examples instead of the 120-example sample), named films left out (docs/results/scaling.md). Copies the stages of
# the runs of scripts/scaling_study_fresh.sh and `INSERT_MISSING=false scripts/scaling_study_fresh_trained.sh ...
# sft 160`; the overrides below are the whole difference to configs/inspired.yaml (the training ones only keep
# train-item current).
#   bash scripts/scaling_study_fulldev.sh runs/inspired-fresh-1.5b runs/inspired-fresh-1.5b-sft160-retrieved
set -euo pipefail
cd "$(dirname "$0")/.."
UNTUNED=${1:?usage: scaling_study_fulldev.sh UNTUNED-RUN SFT-RUN}
SFT=${2:?usage: scaling_study_fulldev.sh UNTUNED-RUN SFT-RUN}
REGES=${REGES:-.venv/bin/reges}
# The retriever these runs were measured with: configs/inspired.yaml before people named and ReDial's co-mentions
# became its default (2026-12-06, docs/results/signals.md); harmless for ReDial.
AS_MEASURED=(train_retriever.people=false train_retriever.cross_dataset=null train_retriever.lora_rank=0
             train_retriever.lr=5e-5)
COMMON=(mine.exclude_named=true generate.mode=rank generate.max_examples=0 generate.fusion_alpha=1.0 run.threads=1
        item_llm.model=qwen2.5-coder-1.5b-instruct item_llm.dtype=bfloat16 item_llm.batch_size=4 "${AS_MEASURED[@]}")
TRAIN=(train_item.objective=sft train_item.max_examples=160 train_item.batch_size=1 train_item.grad_accum=8
       train_item.save_every_steps=2 mine.insert_missing=false)
copy() {  # copy SRC DST: the stages a variant shares, never rebuilt
  mkdir -p "$2"
  for stage in data catalog index distill train-query rewrite train-retriever retrieve mine train-item; do
    if [ -e "$1/$stage" ] && [ ! -e "$2/$stage" ]; then cp -r "$1/$stage" "$2/$stage"; fi
  done
  cp "$1/config.yaml" "$2/config.yaml"
}
copy "$UNTUNED" runs/inspired-fulldev-1.5b-untuned
copy "$SFT" runs/inspired-fulldev-1.5b-sft160-retrieved
for stage in generate evaluate; do
  "$REGES" "$stage" --config configs/inspired.yaml --run-dir runs/inspired-fulldev-1.5b-untuned "${COMMON[@]}" \
    generate.use_adapter=false
  "$REGES" "$stage" --config configs/inspired.yaml --run-dir runs/inspired-fulldev-1.5b-sft160-retrieved \
    "${COMMON[@]}" "${TRAIN[@]}"
done
