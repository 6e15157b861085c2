#!/usr/bin/env bash
# Does the 135M Query Expert's student gain from more distilled examples? (docs/results/scaling.md, seventh
# session: the lever the sixth session's 135M -> 1.5B study left.) A copy of the trained run RUNS/<ds> whose student
# trains on N of the distilled train examples instead of the config's train_query.max_examples (240 on INSPIRED),
# everything else the same: data, catalog, index and distill copied, the fine-tuned encoder's checkpoint reused
# (the train-retriever stage is redone: its weights are re-tuned with the new queries). Then the two students side
# by side: compare_runs (paired), the new query alone (retrieval_ablation) and the query's own share in each fusion
# (query_feature_effect).
#   bash scripts/query_student_more_data.sh inspired 960 [RUNS]     # ~25 min on this CPU for 960
set -euo pipefail
cd "${REGES_ROOT:-$(dirname "$0")/..}"
DS=${1:?usage: query_student_more_data.sh inspired|redial N [RUNS]}
N=${2:?N: distilled examples the student trains on (0: all)}
RUNS=${3:-runs}
THREADS=${THREADS:-2}
REGES=${REGES:-.venv/bin/reges}
PY=${PY:-.venv/bin/python}
BASE=$RUNS/$DS
RUN=$RUNS/$DS-student-$N
mkdir -p "$RUN"
for stage in data catalog index distill; do [ -e "$RUN/$stage" ] || cp -r "$BASE/$stage" "$RUN/$stage"; done
if [ ! -e "$RUN/train-retriever" ]; then
  mkdir -p "$RUN/train-retriever" && cp -r "$BASE/train-retriever/checkpoints" "$RUN/train-retriever/"
fi
for stage in train-query rewrite train-retriever retrieve evaluate; do
  [ -f "$RUN/$stage/manifest.json" ] || "$REGES" "$stage" --config "configs/$DS.yaml" --run-dir "$RUN" \
    run.threads=$THREADS train_query.max_examples=$N
done
"$PY" benchmarks/compare_runs.py --split dev --runs "student on the config's examples=$BASE" \
  "student on $N examples=$RUN" --out "docs/results/query_student_${DS}_$N.md"
# the base run's query alone: query_student_ablation_<ds>.md (scripts/query_student_study.sh, the same run)
"$PY" benchmarks/retrieval_ablation.py "$RUN" --split dev --threads "$THREADS" \
  --out "docs/results/query_student_ablation_$(basename "$RUN")_more_data.md"
"$PY" benchmarks/query_feature_effect.py --run-dir "$RUN" --out "docs/results/query_feature_effect_${DS}_135m_$N.md"
