#!/usr/bin/env bash
# Regenerate the numbers the README and docs/results/ quote, from the committed configs, and time each part.
#
# Usage: scripts/reproduce.sh [readme|all|smoke]
#   readme  every number of the README: both trained runs, the retrieval ablation, the Item Expert benchmarks, the
#           random-negative variants, the shipped bundle's check, the end-to-end report, split sizes and stage times,
#           per-turn latency and serving of the shipped recommender. About 9.5 h on this 2-core CPU (estimates per
#           part below).
#   all     readme, then what the other docs/results pages quote: SFT and k = 10 variants, oracle fields,
#           retrieval baselines and speed, the distillation study, encoder fine-tuning, LLM inference and LoRA
#           training speed, catalog cleaning, serving and latency of the full runs. About 15 h in all.
#   smoke   the same commands on configs/tiny.yaml, with tiny sizes, into a temporary folder (REPRODUCE_OUT, or a new
#           mktemp -d): 12 min with the tiny trained run already in REPRODUCE_OUT/runs/tiny, 25 min from scratch, on
#           this 2-core CPU shared with training jobs (2026-12-06). tests/test_benchmarks.py runs it.
# Environment: RUNS (run dirs, default runs), RESULTS (generated pages, default docs/results), PY, REGES.
# Every command's output goes to a generated file (a page written whole by its script); the hand-written pages
# (end_to_end_cost.md, query_expert.md, item_expert.md, retrieval.md, llm.md, llm_training.md, reliability.md,
# catalog_cleaning.md) quote those files and are not touched. Overrides below are part of the command, so this file
# records them. Not reproduced: comparisons with the code of older commits (turn_latency_shipped_7cdcf74_*, the
# "before" rows of reliability.md and serving.md), and research notes that name no command.
# Timings depend on the machine and its load: the estimates are for this project's 2-core CPU, alone. Rerunning
# resumes: `reges all` skips complete stages; the few single-stage commands (distill on dev, the oracle evaluations)
# and every benchmark run again.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-readme}
PY=${PY:-.venv/bin/python}
REGES=${REGES:-.venv/bin/reges}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1

case $MODE in
  readme|all)
    RUNS=${RUNS:-runs}
    RESULTS=${RESULTS:-docs/results}
    DATASETS=(redial inspired)
    declare -A CONFIG=([redial]=configs/redial.yaml [inspired]=configs/inspired.yaml)
    FIRST=redial LAST=inspired   # ReDial-only variants run on FIRST, INSPIRED-only ones on LAST
    IE_TOP_K="10 20 50" IE_FREE_TOP_K=20 IE_EXAMPLES=200 IE_TUNE=150 TURNS=30 TURNS_FULL=20 CLIENTS="1 8 32"
    REQUESTS=32
    REQUESTS_INSPIRED=100 BOOTSTRAP=1000 QUERIES=200 SYNTHETIC=100000 LLM_RUNS=3 PROMPT_TOKENS=256 GEN_TOKENS=32
    TRAIN_ROUNDS=2 TRAIN_STEPS=5 TRAIN_WARMUP=1 FT_STEPS=8 FT_ROUNDS=2 DISTILL_EXAMPLES=300 CANDIDATES="10 50"
    RERANK=(--max-pairs 2000 --max-length 256 --negatives 3)
    TITLES=../shared/data/movies/txy77__iEvaLM-CRS/data/redial/id2info.json
    ;;
  smoke)
    OUT=${REPRODUCE_OUT:-$(mktemp -d)}
    RUNS=$OUT/runs
    RESULTS=$OUT/results
    DATASETS=(tiny)
    declare -A CONFIG=([tiny]=configs/tiny.yaml)
    FIRST=tiny LAST=tiny
    IE_TOP_K="2 3" IE_FREE_TOP_K=3 IE_EXAMPLES=0 IE_TUNE=0 TURNS=2 TURNS_FULL=2 CLIENTS="1 2"
    REQUESTS=4
    REQUESTS_INSPIRED=4 BOOTSTRAP=20 QUERIES=3 SYNTHETIC=500 LLM_RUNS=1 PROMPT_TOKENS=32 GEN_TOKENS=2
    TRAIN_ROUNDS=1 TRAIN_STEPS=1 TRAIN_WARMUP=0 FT_STEPS=1 FT_ROUNDS=1 DISTILL_EXAMPLES=3 CANDIDATES=2
    RERANK=(--max-pairs 8 --max-length 64 --negatives 1 --top-k 3 --batch-size 4)
    # llm_inference samples 50 titles from an id2info.json; the smoke run makes one rather than read ../shared/data.
    TITLES=$OUT/titles.json
    mkdir -p "$OUT"
    $PY -c 'import json,sys; json.dump({str(i): {"name": f"Movie {i} ({1950 + i})"} for i in range(60)},
      open(sys.argv[1], "w"))' "$TITLES"
    ;;
  *) echo "usage: scripts/reproduce.sh [readme|all|smoke]" >&2; exit 2 ;;
esac
mkdir -p "$RUNS" "$RESULTS"
TIMES=()
# the stages a variant of the Item Expert shares with its trained run
UP_TO_RETRIEVE="data catalog index distill train-query rewrite train-retriever retrieve"

part() {  # part NAME ESTIMATE FUNCTION: run FUNCTION, print and keep its wall time
  local name=$1 estimate=$2 start=$SECONDS
  echo "=== reproduce: $name (estimate: $estimate) ==="
  "$3"
  TIMES+=("$name: $((SECONDS - start)) s (estimate: $estimate)")
  echo "=== reproduce: $name done in $((SECONDS - start)) s ==="
}

link_stages() {  # link_stages SOURCE_RUN TARGET_RUN STAGE...: a variant run dir sharing the source's finished stages
  local source=$1 target=$2
  shift 2
  mkdir -p "$target"
  for stage in "$@"; do [ -e "$target/$stage" ] || ln -s "$(realpath "$source/$stage")" "$target/$stage"; done
}

variant_all() {  # variant_all DATASET VARIANT "SHARED STAGES" OVERRIDE...: `reges all` in RUNS/DATASET-VARIANT,
  # which links the shared stages of RUNS/DATASET. Refused when a shared stage is not complete under the overrides:
  # `reges all` would redo it through the link, inside RUNS/DATASET.
  local d=$1 target=$RUNS/$1-$2 stages=$3 not_complete
  shift 3
  # shellcheck disable=SC2086  # stages is a list
  link_stages "$RUNS/$d" "$target" $stages
  not_complete=$($REGES status --config "${CONFIG[$d]}" --run-dir "$target" "$@" |
    awk -v shared=" $stages " 'index(shared, " " $1 " ") && $2 != "complete"')
  if [ -n "$not_complete" ]; then
    printf 'reproduce: stages %s shares with %s are not complete under %s:\n%s\n' "$target" "$RUNS/$d" "$*" \
      "$not_complete" >&2
    exit 1
  fi
  $REGES all --config "${CONFIG[$d]}" --run-dir "$target" "$@" run.show_progress=false
}

# --- readme ---------------------------------------------------------------------------------------------------------

trained_runs() {  # ReDial ~3 h (listwise Item Expert on 320 examples), INSPIRED ~1 h: docs/results/end_to_end_cost.md
  for d in "${DATASETS[@]}"; do
    $REGES all --config "${CONFIG[$d]}" --run-dir "$RUNS/$d" run.show_progress=false
  done
}

retrieval_ablation() {  # ~10 min per dataset: teacher queries on dev (evaluation only), then the ablation
  for d in "${DATASETS[@]}"; do
    link_stages "$RUNS/$d" "$RUNS/$d-teacher" data catalog index
    $REGES distill --config "${CONFIG[$d]}" --run-dir "$RUNS/$d-teacher" 'distill.splits=[dev]' \
      run.show_progress=false run.overwrite=true
    $PY benchmarks/retrieval_ablation.py "$RUNS/$d" --split dev --teacher-run "$RUNS/$d-teacher" --threads 1 \
      --bootstrap "$BOOTSTRAP" --out "$RESULTS/retrieval_ablation_$d.md"
  done
}

item_expert_benchmarks() {  # ~1.5 h per dataset: rank mode at three k on 200 dev examples, free mode on all of dev
  for d in "${DATASETS[@]}"; do
    # shellcheck disable=SC2086  # IE_TOP_K is a list of cutoffs
    $PY benchmarks/item_expert.py --run-dir "$RUNS/$d" --split dev --max-examples "$IE_EXAMPLES" \
      --tune-examples "$IE_TUNE" --top-k $IE_TOP_K --modes rank --variants tuned --out "$RESULTS/item_expert_$d.md"
    $PY benchmarks/item_expert.py --run-dir "$RUNS/$d" --split dev --max-examples 0 --top-k "$IE_FREE_TOP_K" \
      --modes free --variants tuned --batch-size 8 --threads 2 --out "$RESULTS/item_expert_${d}_free.md"
  done
}

random_negatives() {  # ~1.5 h ReDial, ~45 min INSPIRED: the Item Expert trained on random instead of hard negatives
  for d in "${DATASETS[@]}"; do
    variant_all "$d" random "$UP_TO_RETRIEVE" mine.negatives=random
  done
}

shipped_bundle() {  # ~10 min: shipped_<first>.md: scripts/ship_redial.sh on the trained run (complete: nothing is
  # retrained), exporting into RUNS/<first>-bundle instead of src/reges/shipped/, then its check (dev retrieval with
  # the bundle's files next to the run, paired)
  CONFIG="${CONFIG[$FIRST]}" BUNDLE="$RUNS/$FIRST-bundle" RESULT="$RESULTS/shipped_$FIRST.md" REGES=$REGES PY=$PY \
    bash scripts/ship_redial.sh "$RUNS/$FIRST"
}

end_to_end_report() {  # ~1 min: the README's Results tables come from this page
  local runs=() variants=()
  for d in "${DATASETS[@]}"; do
    runs+=("$d=$RUNS/$d")
    variants+=("$d:random negatives=$RUNS/$d-random")
  done
  if [ "$MODE" != readme ]; then
    variants+=("$LAST:SFT=$RUNS/$LAST-sft" "$FIRST:k = 10=$RUNS/$FIRST-k10"
      "$FIRST:SFT, constrained=$RUNS/$FIRST-sft-constrained")
  fi
  $PY benchmarks/end_to_end_report.py --runs "${runs[@]}" --variant-runs "${variants[@]}" --ablation-dir "$RESULTS" \
    --out "$RESULTS/end_to_end.md"
}

run_summary() {  # seconds: the README's split table and end-to-end stage time
  local runs=()
  for d in "${DATASETS[@]}"; do runs+=("$d=$RUNS/$d"); done
  $PY benchmarks/run_summary.py --runs "${runs[@]}" --out "$RESULTS/run_summary.md"
}

shipped_latency() {  # ~15 min: per-turn latency and serving of the shipped recommender (the trained run), with and
  # without the Item Expert
  local s=$RUNS/$FIRST
  $PY benchmarks/turn_latency.py --run-dir "$s" --split dev --turns "$TURNS" --threads 2 \
    --out "$RESULTS/turn_latency_shipped.md"
  $PY benchmarks/turn_latency.py --run-dir "$s" --split dev --turns "$TURNS" --threads 2 \
    --override generate.fusion_alpha=0 --out "$RESULTS/turn_latency_shipped_fast.md"
  # shellcheck disable=SC2086  # CLIENTS is a list of concurrency levels
  $PY benchmarks/serving.py --run-dir "$s" --clients $CLIENTS --requests "$REQUESTS" --max-seconds 90 \
    --out "$RESULTS/serving_trained.md"
  # shellcheck disable=SC2086
  $PY benchmarks/serving.py --run-dir "$s" --clients $CLIENTS --requests "$REQUESTS" --max-seconds 90 \
    --override generate.fusion_alpha=0 --out "$RESULTS/serving_trained_fast.md"
}

# --- all ------------------------------------------------------------------------------------------------------------

item_expert_variants() {  # ~2.5 h: INSPIRED SFT objective; ReDial picks among 10 candidates; ReDial SFT, constrained
  variant_all "$LAST" sft "$UP_TO_RETRIEVE mine" train_item.objective=sft
  variant_all "$FIRST" k10 "$UP_TO_RETRIEVE mine train-item" generate.top_k=10
  variant_all "$FIRST" sft-constrained "$UP_TO_RETRIEVE mine" train_item.objective=sft generate.mode=constrained
}

oracle_fields() {  # ~5 min: the oracle with fewer attributes (retrieval.md); the trained runs have the default
  local fields
  for d in "${DATASETS[@]}"; do
    for fields in genre,director,star director,star; do
      link_stages "$RUNS/$d" "$RUNS/$d-oracle-${fields//,/-}" data catalog index distill train-query rewrite \
        train-retriever retrieve
      $REGES evaluate --config "${CONFIG[$d]}" --run-dir "$RUNS/$d-oracle-${fields//,/-}" \
        'evaluate.baselines=[oracle]' "evaluate.oracle_fields=[$fields]" run.show_progress=false run.overwrite=true
    done
  done
}

retrieval_speed_and_baselines() {  # ~10 min: retrieval.md's tables
  local runs=()
  for d in "${DATASETS[@]}"; do runs+=(--run "${CONFIG[$d]}" "$RUNS/$d"); done
  $PY benchmarks/retrieval_baselines.py "${runs[@]}" --split dev --out "$RESULTS/retrieval_baselines.md"
  $PY benchmarks/retrieval_speed.py --run-dir "$RUNS/$FIRST" --queries "$QUERIES" --threads 2 \
    --out "$RESULTS/retrieval_speed.json"
  $PY benchmarks/retrieval_speed.py --run-dir "$RUNS/$FIRST" --queries "$QUERIES" --threads 1 \
    --synthetic-items "$SYNTHETIC" --out "$RESULTS/retrieval_speed_synthetic.json"
}

distillation_study() {  # ~10 min: query_expert.md's teacher table (300 seeded train examples per dataset)
  for d in "${DATASETS[@]}"; do
    link_stages "$RUNS/$d" "$RUNS/$d-qe" data catalog index
    $REGES distill --config "${CONFIG[$d]}" --run-dir "$RUNS/$d-qe" "distill.max_examples=$DISTILL_EXAMPLES" \
      run.threads=1 run.show_progress=false run.overwrite=true
    cp "$RUNS/$d-qe/distill/stats.json" "$RESULTS/distill_stats_$d.json"
  done
}

training_speed() {  # ~15 min: encoder fine-tuning per dtype, LoRA training per mode
  $PY benchmarks/encoder_finetune.py --run-dir "$RUNS/$LAST" --steps "$FT_STEPS" --rounds "$FT_ROUNDS" --threads 2 \
    --out "$RESULTS/encoder_finetune.md"
  $PY benchmarks/llm_training.py --rounds "$TRAIN_ROUNDS" --steps "$TRAIN_STEPS" --warmup "$TRAIN_WARMUP" --threads 0 \
    --out "$RESULTS/llm_training_run.md"
}

llm_inference() {  # ~3 min: SmolLM2 per backend
  # shellcheck disable=SC2086  # CANDIDATES is a list of candidate-list sizes
  $PY benchmarks/llm_inference.py --runs "$LLM_RUNS" --threads 2 --prompt-tokens "$PROMPT_TOKENS" \
    --gen-tokens "$GEN_TOKENS" --candidates $CANDIDATES --titles-file "$TITLES" --out "$RESULTS/llm_inference.md"
}

catalog_cleaning() {  # ~3 min: catalog_cleaning.md's counts (its data stages are reused when complete)
  local runs=()
  for d in "${DATASETS[@]}"; do runs+=(--run "${CONFIG[$d]}" "$RUNS/cc-$d"); done
  $PY benchmarks/catalog_cleaning.py "${runs[@]}" --split dev --out "$RESULTS/catalog_cleaning_counts"
}

cross_dataset() {  # ~15 min: cross_dataset.md (INSPIRED with and without ReDial's co-mentions; reuses the encoder)
  CONFIG="${CONFIG[$LAST]}" NAME=$LAST REGES=$REGES bash scripts/cross_dataset_study.sh "$RUNS/$LAST" "$RUNS"
  $PY benchmarks/compare_runs.py --split dev --runs "no cross=$RUNS/$LAST-nocross" "cross=$RUNS/$LAST-cross" \
    --bootstrap "$BOOTSTRAP" --out "$RESULTS/cross_dataset_$LAST.md"
}

retrieval_signals() {  # ~3.5 h: signals_<dataset>.md (people, content, cross-dataset and lossy pairs, each vs a base)
  for d in "${DATASETS[@]}"; do
    local base="$RUNS/$d-signals"   # ReDial: built by the study (no Query Expert); INSPIRED: cross_dataset's run
    [ "$d" = "$LAST" ] && base="$RUNS/$LAST-nocross"
    OUT="$RESULTS/signals_$d.md" OUT_LOSSY="$RESULTS/signals_${d}_lossy.md" OUT_CROSS="$RESULTS/signals_${d}_cross.md" \
      BOOTSTRAP=$BOOTSTRAP REGES=$REGES PY=$PY \
      bash scripts/signal_study.sh "$d" "$base"
    # variants of the collaborative signal as extra features of the config's retriever (no new run: minutes), and
    # where that retriever misses (by the target's training mentions)
    local best="$base-people"; [ "$d" = "$LAST" ] && [ "$d" != "$FIRST" ] && best="$base-cross-people"
    $PY benchmarks/comention_variants.py --run-dir "$best" --bootstrap "$BOOTSTRAP" \
      --out "$RESULTS/comention_variants_$d.md"
    $PY benchmarks/recall_headroom.py --run-dir "$best" --bootstrap "$BOOTSTRAP" \
      --out "$RESULTS/recall_headroom_$d.md"
    # the student query's own share of the trained run's fusion (its with_query weights, the query on and off),
    # and the query kept only in the first 1-3 user turns (weights re-tuned on tune)
    $PY benchmarks/query_feature_effect.py --run-dir "$RUNS/$d" --bootstrap "$BOOTSTRAP" --early-turns 1 2 3 \
      --out "$RESULTS/query_feature_effect_$d.md"
    # how far dev moves with the tune examples the weight search sees, and the search bagged over 30 resamples
    $PY benchmarks/weight_stability.py --run-dir "$RUNS/$d" --resamples 30 --bootstrap "$BOOTSTRAP" \
      --out "$RESULTS/weight_stability_$d.md"
    # the nearest training dialogues' recommended films as one more fusion feature (weights re-tuned on tune)
    $PY benchmarks/dialogue_neighbours.py --run-dir "$RUNS/$d" --bootstrap "$BOOTSTRAP" --resamples 30 \
      --out "$RESULTS/dialogue_neighbours_$d.md"
    # the fusion weights searched on the train split too (each example's own dialogue left out of the counts)
    $PY benchmarks/train_split_fusion.py --run-dir "$RUNS/$d" --bootstrap "$BOOTSTRAP" \
      --out "$RESULTS/train_split_fusion_$d.md"
    # the fusion weights searched for the served list (named films dropped, fresh targets only)
    $PY benchmarks/served_objective.py --run-dir "$RUNS/$d" --bootstrap "$BOOTSTRAP" \
      --out "$RESULTS/served_objective_$d.md"
    # beyond a linear weight set: a gradient-boosted reranker of the fused top 100 learned on the train split
    $PY benchmarks/learned_fusion.py --run-dir "$RUNS/$d" --bootstrap "$BOOTSTRAP" \
      --out "$RESULTS/learned_fusion_$d.md"
    if [ "$d" = "$FIRST" ]; then
      if [ "$d" = redial ]; then  # the only dataset with a lossy file (the smoke run's tiny config has none)
        # the lossy file's guessed speaking order checked on the clean train dialogues (lossy_order.md; the encoder
        # trained on its interleaved pairs is scripts/lossy_interleaved.sh, ~1.5 h)
        $PY benchmarks/lossy_order.py --config "${CONFIG[$d]}" --run-dir "$RUNS/$d" --out "$RESULTS/lossy_order.md"
      fi
      # the trained run (what ships) next to the best signal run
      $PY benchmarks/compare_runs.py --split dev \
        --runs "best signal run (people, full fine-tuning, no query)=$base-people" \
        "shipped (${CONFIG[$d]}: LoRA, people, student query)=$RUNS/$d" --bootstrap "$BOOTSTRAP" \
        --out "$RESULTS/shipped_vs_signals_$d.md"
    fi
  done
}

constraints_effect() {  # ~1 min: constraints_inspired_{dev,tune}.md (stated constraints re-ordering a run's retrieval)
  for split in dev tune; do
    $PY benchmarks/constraints_effect.py --run-dir "$RUNS/$LAST" --split "$split" --bootstrap "$BOOTSTRAP" \
      --out "$RESULTS/constraints_${LAST}_$split.md"
  done
}

learned_reranker() {  # ~1 h: reranker_inspired.md (a MiniLM cross-encoder on the hard negatives, next to the expert)
  $PY benchmarks/reranker.py --run-dir "$RUNS/$LAST" "${RERANK[@]}" --bootstrap "$BOOTSTRAP" \
    --out "$RESULTS/reranker_$LAST.md"
}

full_run_latency() {  # ~20 min: serving.md (INSPIRED run), reliability.md's mixed traffic, ReDial per turn
  # shellcheck disable=SC2086
  $PY benchmarks/serving.py --run-dir "$RUNS/$LAST" --clients $CLIENTS --requests "$REQUESTS_INSPIRED" \
    --max-seconds 60 --out "$RESULTS/serving.md"
  link_stages "$RUNS/$LAST" "$RUNS/$LAST-frozen" data catalog index  # the frozen path: retriever top-1 only
  cp "$RUNS/$LAST/config.yaml" "$RUNS/$LAST-frozen/config.yaml"  # `reges serve` reads the run's config
  # shellcheck disable=SC2086
  $PY benchmarks/serving.py --run-dir "$RUNS/$LAST-frozen" --clients $CLIENTS --requests "$REQUESTS_INSPIRED" \
    --max-seconds 60 --top-k 1 3 5 10 --poisoned-fraction 0.1 --out "$RESULTS/serving_mixed.md"
  $PY benchmarks/turn_latency.py --run-dir "$RUNS/$FIRST" --split dev --turns "$TURNS_FULL" --threads 1 \
    --out "$RESULTS/turn_latency_${FIRST}_full.md"
}

part "trained runs" "ReDial ~3 h + INSPIRED ~1 h on 2 cores" trained_runs
part "retrieval ablation" "~20 min" retrieval_ablation
part "Item Expert benchmarks" "~3 h" item_expert_benchmarks
part "random-negative variants" "~2.3 h" random_negatives
part "shipped bundle" "~10 min" shipped_bundle
if [ "$MODE" != readme ]; then
  # before the report, which reads these variant runs
  part "Item Expert variants" "~2.5 h" item_expert_variants
fi
part "end-to-end report" "~1 min" end_to_end_report
part "split sizes and stage times" "seconds" run_summary
part "shipped latency and serving" "~15 min" shipped_latency
if [ "$MODE" != readme ]; then
  part "oracle fields" "~5 min" oracle_fields
  part "retrieval speed and baselines" "~10 min" retrieval_speed_and_baselines
  part "distillation study" "~10 min" distillation_study
  part "training speed" "~15 min" training_speed
  part "LLM inference" "~3 min" llm_inference
  part "catalog cleaning" "~3 min" catalog_cleaning
  part "cross-dataset co-mentions" "~15 min" cross_dataset
  part "retrieval signals" "~2.5 h" retrieval_signals
  part "stated constraints" "~1 min" constraints_effect
  part "learned reranker" "~1 h" learned_reranker
  part "full-run latency and serving" "~20 min" full_run_latency
fi

echo "=== reproduce $MODE: every part done; run dirs in $RUNS, generated pages in $RESULTS ==="
printf '  %s\n' "${TIMES[@]}"
