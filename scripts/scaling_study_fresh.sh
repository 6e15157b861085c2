#!/usr/bin/env bash
# The Item Expert in the served setting (docs/results/scaling.md): candidates leave out the films the dialogue
# already named (mine.exclude_named=true), as the recommender does when it serves. Untuned 135M and 1.5B experts in
# rank mode on the same retrieval, a seeded sample of N tune and N dev examples, fusion alpha tuned on tune.
#   bash scripts/scaling_study_fresh.sh inspired runs/inspired [runs-root]   # needs `bash scripts/install.sh --qwen`
#   K=10 VARIANTS=1.5b bash scripts/scaling_study_fresh.sh ...   # 10 candidates instead of 20, the 1.5B expert only
#   DIALOGUE=none VARIANTS=1.5b bash scripts/scaling_study_fresh.sh ...   # ablation: the prompt keeps only the
#       dialogue's last character (mine.max_context_chars=1), dev only, the expert alone (alpha 1): does it read it?
# BASE is a complete 135M run of configs/<ds>.yaml through `retrieve` (`reges all` builds one); its upstream stages
# are copied, never rebuilt. The overrides below are the whole difference to configs/<ds>.yaml. Every stage resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
DS=${1:?usage: scaling_study_fresh.sh inspired|redial BASE-RUN [runs-root]}
BASE=${2:?BASE-RUN: a complete run of configs/<ds>.yaml through retrieve}
ROOT=${3:-runs}
N=${N:-120}
K=${K:-20}
VARIANTS=${VARIANTS:-135m 1.5b}
DIALOGUE=${DIALOGUE:-full}
REGES=${REGES:-.venv/bin/reges}
CONFIG=configs/$DS.yaml
# The retriever these runs were measured with: configs/inspired.yaml before people named and ReDial's co-mentions
# became its default (2026-12-06, docs/results/signals.md); harmless for ReDial.
AS_MEASURED=(train_retriever.people=false train_retriever.cross_dataset=null train_retriever.lora_rank=0
             train_retriever.lr=5e-5)
COMMON=(mine.exclude_named=true generate.mode=rank generate.use_adapter=false generate.max_examples=$N
        generate.top_k=$K run.threads=1 "${AS_MEASURED[@]}")
QWEN=(item_llm.model=qwen2.5-coder-1.5b-instruct item_llm.dtype=bfloat16 item_llm.batch_size=4)
UPSTREAM=(data catalog index distill train-query rewrite train-retriever retrieve)
for variant in $VARIANTS; do
  RUN=$ROOT/$DS-fresh-$variant; [ "$K" = 20 ] || RUN=$RUN-k$K
  ABLATE=()
  if [ "$DIALOGUE" = none ]; then RUN=$RUN-nodialogue; ABLATE=(mine.max_context_chars=1 generate.fusion_alpha=1.0); fi
  mkdir -p "$RUN"
  for stage in "${UPSTREAM[@]}"; do
    if [ ! -e "$RUN/$stage" ]; then cp -r "$BASE/$stage" "$RUN/$stage"; fi
  done
  [ -f "$RUN/config.yaml" ] || cp "$BASE/config.yaml" "$RUN/config.yaml"
  EXTRA=(); [ "$variant" = 1.5b ] && EXTRA=("${QWEN[@]}")
  for stage in generate evaluate; do
    "$REGES" "$stage" --config "$CONFIG" --run-dir "$RUN" "${COMMON[@]}" "${EXTRA[@]}" "${ABLATE[@]}"
  done
done
