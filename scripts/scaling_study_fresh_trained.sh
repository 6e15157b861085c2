#!/usr/bin/env bash
# A 1.5B Item Expert trained in the served setting (docs/results/scaling.md): mining and picking both leave out the
# films the dialogue already named (mine.exclude_named=true), so training spends the model on fresh films. Then the
# same seeded 120 tune / 120 dev examples as scripts/scaling_study_fresh.sh, rank mode, alpha tuned on tune.
#   bash scripts/scaling_study_fresh_trained.sh inspired runs/inspired-fresh-1.5b [sft|listwise] [N-TRAIN]
#   INSERT_MISSING=false bash scripts/scaling_study_fresh_trained.sh ...   # train only where the retriever ranked
#       the target (mine.insert_missing=false): no inserted odd-one-out targets
#   GEN_EXAMPLES=0 bash scripts/scaling_study_fresh_trained.sh inspired BASE sft all   # every mined example, whole
#       tune and dev splits (generate.max_examples=0); FUSION_ALPHA=1.0 scores dev only, the expert alone (the fused
#       pick at every alpha then comes from benchmarks/expert_diagnostics.py)
#   RETRIEVER=config THREADS=2 GEN_EXAMPLES=500 INSERT_MISSING=false bash scripts/scaling_study_fresh_trained.sh \
#       redial runs/redial sft 400   # on the shipped ReDial run: its retriever as configs/redial.yaml builds it (no
#       AS_MEASURED pins), both cores
# BASE is a run of scripts/scaling_study_fresh.sh (its upstream stages are copied, never rebuilt); the overrides
# below are the whole difference to configs/<ds>.yaml. Every stage resumes (train-item checkpoints every 2 steps).
set -euo pipefail
cd "$(dirname "$0")/.."
DS=${1:?usage: scaling_study_fresh_trained.sh inspired|redial BASE-RUN [sft|listwise] [N-TRAIN]}
BASE=${2:?BASE-RUN: a run of scripts/scaling_study_fresh.sh}
OBJECTIVE=${3:-sft}
N_TRAIN=${4:-200}   # "all": every mined example (train_item.max_examples=0)
GEN_EXAMPLES=${GEN_EXAMPLES:-120}
INSERT_MISSING=${INSERT_MISSING:-true}
THREADS=${THREADS:-1}
REGES=${REGES:-.venv/bin/reges}
CONFIG=configs/$DS.yaml
RUN=${BASE%-1.5b}-1.5b-$OBJECTIVE$N_TRAIN; [ "$INSERT_MISSING" = true ] || RUN=$RUN-retrieved
MAX_TRAIN=$N_TRAIN; [ "$N_TRAIN" != all ] || MAX_TRAIN=0
[ "$GEN_EXAMPLES" = 120 ] || RUN=$RUN-gen$GEN_EXAMPLES
# The retriever these runs were measured with: configs/inspired.yaml before people named and ReDial's co-mentions
# became its default (2026-12-06, docs/results/signals.md); harmless for ReDial.
AS_MEASURED=(train_retriever.people=false train_retriever.cross_dataset=null train_retriever.lora_rank=0
             train_retriever.lr=5e-5)
[ "${RETRIEVER:-as_measured}" != config ] || AS_MEASURED=()   # BASE built with the config's own retriever
OVERRIDES=(mine.exclude_named=true generate.mode=rank generate.max_examples=$GEN_EXAMPLES run.threads=$THREADS
           item_llm.model=qwen2.5-coder-1.5b-instruct item_llm.dtype=bfloat16 item_llm.batch_size=4
           train_item.objective=$OBJECTIVE train_item.max_examples=$MAX_TRAIN train_item.batch_size=1
           train_item.grad_accum=8 train_item.save_every_steps=2 mine.insert_missing=$INSERT_MISSING "${AS_MEASURED[@]}")
[ -z "${FUSION_ALPHA:-}" ] || OVERRIDES+=(generate.fusion_alpha=$FUSION_ALPHA)   # fixed: no tune split scored
mkdir -p "$RUN"
for stage in data catalog index distill train-query rewrite train-retriever retrieve; do
  if [ ! -e "$RUN/$stage" ]; then cp -r "$BASE/$stage" "$RUN/$stage"; fi
done
[ -f "$RUN/config.yaml" ] || cp "$BASE/config.yaml" "$RUN/config.yaml"
for stage in mine train-item generate evaluate; do  # a complete stage is kept (a stage command refuses to redo it)
  [ -f "$RUN/$stage/manifest.json" ] || "$REGES" "$stage" --config "$CONFIG" --run-dir "$RUN" "${OVERRIDES[@]}"
done
