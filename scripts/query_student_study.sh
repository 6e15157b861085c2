#!/usr/bin/env bash
# The Query Expert's student at two scales (docs/results/scaling.md, "Sixth session"): the same grounded-teacher
# queries (distill/) train a SmolLM2-135M student (configs/<ds>.yaml) and a Qwen2.5-Coder-1.5B-Instruct student
# (configs/<ds>-1.5b.yaml: its llm section and the per-pass batch its size needs, the same 8 examples per optimizer
# step); each rewrites tune and dev, and the learned retriever is tuned with that query as one more feature. All
# three retrievers share one fine-tuned encoder and one set of features, so the rows differ only in the query:
#   RUNS/<ds>                  configs/<ds>.yaml through evaluate (the 135M student)
#   RUNS/<ds>-student-1.5b     its data .. distill and train-retriever copied (the encoder checkpoint is reused:
#                              train-retriever's fingerprint does not change), train-query and rewrite at 1.5B
#   RUNS/<ds>-no-query         its train-retriever redone with train_retriever.query_feature=false
# then benchmarks/compare_runs.py pairs them on dev (the no-query run first), benchmarks/retrieval_ablation.py says
# what each student's query retrieves alone, benchmarks/query_feature_effect.py what it adds with the weights held,
# and benchmarks/turn_latency.py times a served turn with each student on both backends (hf: the PEFT adapter in
# the config's dtype; llamacpp: the GGUF file plus the adapter's GGUF copy).
#   bash scripts/query_student_study.sh inspired [RUNS]      # needs `bash scripts/install.sh --qwen`
# THREADS (default 2). Every stage resumes; a complete stage is kept.
set -euo pipefail
cd "${REGES_ROOT:-$(dirname "$0")/..}"
DS=${1:?usage: query_student_study.sh inspired|redial [RUNS]}
RUNS=${2:-runs}
THREADS=${THREADS:-2}
REGES=${REGES:-.venv/bin/reges}
PY=${PY:-.venv/bin/python}
BASE=$RUNS/$DS
BIG=$RUNS/$DS-student-1.5b
NOQ=$RUNS/$DS-no-query
stages() {  # CONFIG RUN STAGE...: run each stage that has no manifest yet
  local config=$1 run=$2; shift 2
  for stage in "$@"; do
    [ -f "$run/$stage/manifest.json" ] || "$REGES" "$stage" --config "$config" --run-dir "$run" run.threads=$THREADS
  done
}
stages "configs/$DS.yaml" "$BASE" data catalog index distill train-query rewrite train-retriever retrieve evaluate
mkdir -p "$BIG"
for stage in data catalog index distill; do [ -e "$BIG/$stage" ] || cp -r "$BASE/$stage" "$BIG/$stage"; done
if [ ! -e "$BIG/train-retriever" ]; then  # the encoder checkpoint only: the stage itself is redone with the new query
  mkdir -p "$BIG/train-retriever" && cp -r "$BASE/train-retriever/checkpoints" "$BIG/train-retriever/"
fi
stages "configs/$DS-1.5b.yaml" "$BIG" train-query rewrite train-retriever retrieve evaluate
CONFIG=configs/$DS.yaml REGES=$REGES bash scripts/retrieval_variant.sh "$BASE" "$NOQ" \
  train_retriever.query_feature=false
"$PY" benchmarks/compare_runs.py --split dev --runs "no query=$NOQ" "135M student=$BASE" "1.5B student=$BIG" \
  --out "docs/results/query_student_$DS.md"
# the teacher's own dev queries (evaluation only: what a perfect student of it would retrieve)
TEACHER=$RUNS/$DS-teacher
mkdir -p "$TEACHER"
for stage in data catalog index; do
  [ -e "$TEACHER/$stage" ] || ln -s "$(realpath "$BASE/$stage")" "$TEACHER/$stage"
done
[ -f "$TEACHER/distill/manifest.json" ] || "$REGES" distill --config "configs/$DS.yaml" --run-dir "$TEACHER" \
  'distill.splits=[dev]' run.threads=$THREADS
for run in "$BASE" "$BIG"; do
  "$PY" benchmarks/retrieval_ablation.py "$run" --split dev --teacher-run "$TEACHER" --threads "$THREADS" \
    --out "docs/results/query_student_ablation_$(basename "$run").md"
done
# the query's own share: each run's with_query weights, the query on and off
"$PY" benchmarks/query_feature_effect.py --run-dir "$BASE" --out "docs/results/query_feature_effect_${DS}_135m.md"
"$PY" benchmarks/query_feature_effect.py --run-dir "$BIG" --out "docs/results/query_feature_effect_${DS}_1.5b.md"
TURNS=${TURNS:-30}
for backend in hf llamacpp; do
  "$PY" benchmarks/turn_latency.py --run-dir "$BASE" --split dev --turns "$TURNS" --threads "$THREADS" \
    --override llm.backend=$backend --out "docs/results/turn_latency_query_135m_${backend}_$DS.md"
  "$PY" benchmarks/turn_latency.py --run-dir "$BIG" --split dev --turns "$TURNS" --threads "$THREADS" \
    --override llm.backend=$backend --out "docs/results/turn_latency_query_1.5b_${backend}_$DS.md"
done
