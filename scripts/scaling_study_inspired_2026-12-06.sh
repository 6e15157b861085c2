#!/usr/bin/env bash
# The INSPIRED runs of docs/results/scaling.md (2026-12-06), on a 135M run of configs/inspired.yaml in runs/inspired
# (complete through retrieve):
# trained (96 listwise examples) and untuned 1.5B Item Experts, generate on a seeded 120-example sample per split.
set -euo pipefail
cd "$(dirname "$0")/.."
REGES=${REGES:-.venv/bin/reges}
DS=inspired; ROOT=runs; BASE=$ROOT/$DS; CONFIG=configs/$DS.yaml
VARIANT=${1:?trained|untuned}
ITEM_1_5B=(
  item_llm.model=qwen2.5-coder-1.5b-instruct item_llm.dtype=bfloat16 item_llm.batch_size=4
  train_item.max_examples=96 train_item.batch_size=1 train_item.grad_accum=8 train_item.save_every_steps=2
  generate.max_examples=120
  run.threads=1
)
UPSTREAM=(data catalog index distill train-query rewrite train-retriever retrieve)
RUN=$ROOT/$DS-item1.5b; [ "$VARIANT" = untuned ] && RUN=$ROOT/$DS-item1.5b-untuned
mkdir -p "$RUN"
for stage in "${UPSTREAM[@]}"; do
  if [ -f "$BASE/$stage/manifest.json" ] && [ ! -e "$RUN/$stage" ]; then cp -r "$BASE/$stage" "$RUN/$stage"; fi
done
cp "$BASE/config.yaml" "$RUN/config.yaml"
if [ "$VARIANT" = trained ]; then STAGES=(mine train-item generate evaluate); EXTRA=(); else STAGES=(generate evaluate); EXTRA=(generate.use_adapter=false); fi
for stage in "${STAGES[@]}"; do
  if [ -f "$RUN/$stage/manifest.json" ]; then continue; fi
  "$REGES" "$stage" --config "$CONFIG" --run-dir "$RUN" "${ITEM_1_5B[@]}" "${EXTRA[@]}"
done
