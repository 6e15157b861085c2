#!/usr/bin/env bash
# docs/results/scaling.md (2026-12-06): the untuned 135M Item Expert (SmolLM2, the run's own llm) on the same candidates and the same seeded sample as the
# 1.5B variants of run_item15.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
REGES=${REGES:-.venv/bin/reges}
BASE=runs/inspired; RUN=runs/inspired-item135m-untuned; CONFIG=configs/inspired.yaml
ARGS=(generate.max_examples=120 generate.use_adapter=false run.threads=1)
mkdir -p "$RUN"
for stage in data catalog index distill train-query rewrite train-retriever retrieve; do
  [ -e "$RUN/$stage" ] || cp -r "$BASE/$stage" "$RUN/$stage"
done
cp "$BASE/config.yaml" "$RUN/config.yaml"
for stage in generate evaluate; do
  [ -f "$RUN/$stage/manifest.json" ] || "$REGES" "$stage" --config "$CONFIG" --run-dir "$RUN" "${ARGS[@]}"
done
