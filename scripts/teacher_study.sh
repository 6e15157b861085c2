#!/usr/bin/env bash
# The Query Expert's teacher at two scales (docs/results/scaling.md): on one seeded sample of the `tune` split,
# the grounded rule teacher and the 1.5B LLM teacher (Qwen2.5-Coder-1.5B-Instruct, grounded and feedback-filtered,
# title-leak filter on) write a query for each example knowing its true item; distill/stats.json reports the kept
# queries' R@10/R@50 over the catalog (the upper bound a perfect student of that teacher reaches).
#   bash scripts/teacher_study.sh inspired [runs-root]    # needs `bash scripts/install.sh --qwen`
# The overrides below are the whole difference to configs/<ds>.yaml. Every stage resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
DS=${1:?usage: teacher_study.sh inspired|redial [runs-root]}
ROOT=${2:-runs}
N=${N:-120}
REGES=${REGES:-.venv/bin/reges}
CONFIG=configs/$DS.yaml
COMMON=(distill.splits=[tune] distill.max_examples=$N index.threads=1 llm.threads=1)
LLM=(distill.teacher=llm distill.teacher_llm.model=qwen2.5-coder-1.5b-instruct distill.teacher_llm.dtype=bfloat16
     distill.teacher_llm.threads=1 distill.teacher_llm.batch_size=4 distill.num_queries=2
     distill.teacher_max_new_tokens=48)
for variant in grounded llm; do
  RUN=$ROOT/$DS-teacher-$variant
  EXTRA=(); [ "$variant" = llm ] && EXTRA=("${LLM[@]}")
  for stage in data catalog index distill; do
    "$REGES" "$stage" --config "$CONFIG" --run-dir "$RUN" "${COMMON[@]}" "${EXTRA[@]}"
  done
done
