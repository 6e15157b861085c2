#!/usr/bin/env bash
# Does a bundle retrieve what the run it came from retrieves? The bundle's retriever differs from the run's in form
# only (float16 card embeddings, the tuned encoder rebuilt from the bundled MiniLM plus its LoRA adapter); this puts
# the bundle's train-retriever/ into CHECK (a copy of RUN's data .. rewrite), redoes retrieve and evaluate there on
# dev with the bundle's files, and compares the two runs paired (benchmarks/compare_runs.py: R@1/10/50 all/novel and
# the retriever's top-1 as served, 95 % intervals of the difference).
#   bash scripts/shipped_check.sh runs/redial src/reges/shipped/redial runs/redial-bundle-check \
#     docs/results/shipped_redial.md [section.key=value ...]
# The overrides: those RUN was built with (none for a run of the committed config). CONFIG (default
# configs/redial.yaml): the run's config. ~5 min on this CPU.
set -euo pipefail
cd "${REGES_ROOT:-$(dirname "$0")/..}"
RUN=${1:?usage: shipped_check.sh RUN BUNDLE CHECK-RUN OUT [overrides]}
BUNDLE=${2:?usage: shipped_check.sh RUN BUNDLE CHECK-RUN OUT [overrides]}
CHECK=${3:?usage: shipped_check.sh RUN BUNDLE CHECK-RUN OUT [overrides]}
OUT=${4:?usage: shipped_check.sh RUN BUNDLE CHECK-RUN OUT [overrides]}
shift 4
REGES=${REGES:-.venv/bin/reges}
PY=${PY:-.venv/bin/python}
CONFIG=${CONFIG:-configs/redial.yaml}
rm -rf "$CHECK"
mkdir -p "$CHECK"
for stage in data catalog index distill train-query rewrite; do
  if [ -e "$RUN/$stage" ]; then cp -r "$RUN/$stage" "$CHECK/$stage"; fi
done
cp -r "$BUNDLE/train-retriever" "$CHECK/train-retriever"
cp "$RUN/config.yaml" "$CHECK/config.yaml"
for stage in retrieve evaluate; do
  "$REGES" "$stage" --config "$CONFIG" --run-dir "$CHECK" run.threads=1 "$@" "retrieve.splits=[tune, dev]" \
    "evaluate.splits=[dev]"
done
"$PY" benchmarks/compare_runs.py --split dev --runs "run=$RUN" "bundle=$CHECK" --out "$OUT"
