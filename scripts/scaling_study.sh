#!/usr/bin/env bash
# The 135M-vs-1.5B study of the Item Generation Expert (docs/results/scaling.md), on one dataset:
#   bash scripts/scaling_study.sh inspired [runs]        # or redial; needs `bash scripts/install.sh --qwen`
# 1. runs/<ds>: the 135M pipeline of configs/<ds>.yaml (complete stages are reused).
# 2. runs/<ds>-item1.5b: the same retriever (data .. retrieve copied from runs/<ds>), the Item Expert at 1.5B
#    (item_llm = Qwen2.5-Coder-1.5B-Instruct): mine, train-item (listwise), generate (rank, alpha tuned on tune),
#    evaluate. The overrides below are the whole difference to configs/<ds>.yaml.
# 3. runs/<ds>-item1.5b-untuned: the untuned 1.5B in rank mode on the same candidates (generate.use_adapter=false).
# Every stage resumes: rerun the script after an interruption. THREADS=1 pins each job to one core (when two jobs
# share a 2-core machine, two threads each thrash).
set -euo pipefail
cd "$(dirname "$0")/.."
DS=${1:?usage: scaling_study.sh inspired|redial [runs-root]}
ROOT=${2:-runs}
REGES=${REGES:-.venv/bin/reges}
CONFIG=configs/$DS.yaml
BASE=$ROOT/$DS
ITEM_1_5B=(
  item_llm.model=qwen2.5-coder-1.5b-instruct item_llm.dtype=bfloat16 item_llm.batch_size=4
  train_item.max_examples=200 train_item.batch_size=1 train_item.grad_accum=8 train_item.save_every_steps=5
  ${THREADS:+run.threads=$THREADS}
)
UPSTREAM=(data catalog index distill train-query rewrite train-retriever retrieve)

copy_upstream() {  # $1: target run dir; copies the 135M run's complete upstream stages once
  mkdir -p "$1"
  for stage in "${UPSTREAM[@]}"; do
    if [ -f "$BASE/$stage/manifest.json" ] && [ ! -e "$1/$stage" ]; then cp -r "$BASE/$stage" "$1/$stage"; fi
  done
}

"$REGES" all --config "$CONFIG" --run-dir "$BASE"

copy_upstream "$ROOT/$DS-item1.5b"
for stage in mine train-item generate evaluate; do
  "$REGES" "$stage" --config "$CONFIG" --run-dir "$ROOT/$DS-item1.5b" "${ITEM_1_5B[@]}"
done

copy_upstream "$ROOT/$DS-item1.5b-untuned"
"$REGES" generate --config "$CONFIG" --run-dir "$ROOT/$DS-item1.5b-untuned" \
  "${ITEM_1_5B[@]}" generate.use_adapter=false
"$REGES" evaluate --config "$CONFIG" --run-dir "$ROOT/$DS-item1.5b-untuned" "${ITEM_1_5B[@]}"
