#!/usr/bin/env bash
# The retrieval signals of docs/results/signals.md on one dataset, each a run next to one base, compared paired.
#   bash scripts/signal_study.sh redial                          # builds the base runs/redial-signals first
#   bash scripts/signal_study.sh inspired runs/inspired-nocross  # an existing run of configs/inspired.yaml
# The base: the committed configs/<ds>.yaml with every signal below off (OFF, NOCROSS) through retrieve and
# evaluate (when BASE has no train-retriever yet: data, catalog, index, distill, train-retriever, retrieve on tune
# and dev, evaluate; no Query Expert, so the fused retriever uses its no-query weights; the student query moved dev R@50 by
# +-0.002 on both datasets). Each variant is OFF plus its own overrides (the later override wins).
# The variants (scripts/retrieval_variant.sh: train-retriever, retrieve, evaluate redone with the overrides shown):
#   content      train_retriever.content=true (the mean named card as a fusion feature; the encoder is reused)
#   people       train_retriever.people=true (the films of the directors and stars the dialogue names)
#   cross        INSPIRED: ReDial's dialogues in the co-mention prior (train_retriever.cross_dataset); ReDial: the
#                converse, INSPIRED's 801 train dialogues (the encoder is reused)
#   crosspairs   INSPIRED only: cross + ReDial's ordered dialogues as encoder pairs (the encoder is retrained)
#   cross-people, crosspairs-people   the combinations with people (ReDial: cross-people, also compared with
#                people itself: OUT_CROSS, default docs/results/signals_redial_cross.md)
#   lora         not a signal: the encoder trained as a rank-16 LoRA adapter (lr 5e-4), the form a bundle can ship
#   lossy        ReDial only: lora + 8,000 order-free encoder pairs from the lossy file (train_retriever.lossy_pairs);
#                also compared with lora itself (OUT_LOSSY, default docs/results/signals_redial_lossy.md)
# The base and the signal variants fine-tune every encoder weight (FULL: as measured, before configs/redial.yaml
# switched to LoRA).
# Then benchmarks/compare_runs.py writes OUT (default docs/results/signals_<ds>.md). VARIANTS picks a subset;
# scripts/reproduce.sh runs it (part "retrieval signals", smoke: on configs/tiny.yaml).
set -euo pipefail
cd "${REGES_ROOT:-$(dirname "$0")/..}"
DS=${1:?usage: signal_study.sh inspired|redial|tiny [BASE-RUN]}
BASE=${2:-runs/$DS-signals}
REGES=${REGES:-.venv/bin/reges}
PY=${PY:-.venv/bin/python}
OUT=${OUT:-docs/results/signals_$DS.md}
BOOTSTRAP=${BOOTSTRAP:-1000}
export CONFIG=configs/$DS.yaml
if [ "$DS" = inspired ]; then VARIANTS=${VARIANTS:-content people cross crosspairs cross-people crosspairs-people}
elif [ "$DS" = redial ]; then VARIANTS=${VARIANTS:-content people lora lossy cross-people}
else VARIANTS=${VARIANTS:-content people lora}; fi
FULL=(train_retriever.lora_rank=0 train_retriever.lr=5e-5)
OFF=(train_retriever.people=false train_retriever.content=false train_retriever.cross_pairs=false
     train_retriever.lossy_pairs=0 "${FULL[@]}")
NOCROSS=(train_retriever.cross_dataset=null)  # (a variant that sets cross_dataset.* must not null it first)
for stage in data catalog index distill train-retriever retrieve evaluate; do
  if [ ! -f "$BASE/$stage/manifest.json" ]; then
    "$REGES" "$stage" --config "$CONFIG" --run-dir "$BASE" run.threads=1 "retrieve.splits=[tune, dev]" "${OFF[@]}" \
      "${NOCROSS[@]}"
  fi
done
S=../shared/data/redial
if [ "$DS" = redial ]; then  # the converse: INSPIRED's train dialogues (its dev and test files never)
  CROSS=(train_retriever.cross_dataset.format=inspired
         "train_retriever.cross_dataset.files=[../shared/data/inspired/BitbanChou__LLMKB/data/inspired/train_data_dbpedia.jsonl]")
else
  CROSS=(train_retriever.cross_dataset.format=redial
         "train_retriever.cross_dataset.files=[$S/Lancelot39__KGSF/data/valid_data.jsonl, $S/txy77__iEvaLM-CRS/data/redial/valid_data.jsonl]"
         train_retriever.cross_dataset.movie_names_file=$S/Kim-Dong-Jun99__ReDial_RecommendationSystem/dataset/movies_with_mentions.csv
         train_retriever.cross_dataset.lossy_file=$S/MarkystarkDotCO__Redial-QA-System/src/download_data/precessed.json.zip)
fi
RUNS=("base=$BASE")
for variant in $VARIANTS; do
  case $variant in
    content) OVERRIDES=("${NOCROSS[@]}" train_retriever.content=true) ;;
    people) OVERRIDES=("${NOCROSS[@]}" train_retriever.people=true) ;;
    lora) OVERRIDES=("${NOCROSS[@]}" train_retriever.lora_rank=16 train_retriever.lr=5e-4) ;;
    lossy) OVERRIDES=("${NOCROSS[@]}" train_retriever.lora_rank=16 train_retriever.lr=5e-4
                      train_retriever.lossy_pairs=8000) ;;
    cross) OVERRIDES=("${CROSS[@]}") ;;
    crosspairs) OVERRIDES=("${CROSS[@]}" train_retriever.cross_pairs=true) ;;
    cross-people) OVERRIDES=("${CROSS[@]}" train_retriever.people=true) ;;
    crosspairs-people) OVERRIDES=("${CROSS[@]}" train_retriever.cross_pairs=true train_retriever.people=true) ;;
    *) echo "unknown variant $variant" >&2; exit 2 ;;
  esac
  REGES=$REGES bash scripts/retrieval_variant.sh "$BASE" "$BASE-$variant" "${OFF[@]}" "${OVERRIDES[@]}"
  RUNS+=("$variant=$BASE-$variant")
done
"$PY" benchmarks/compare_runs.py --split dev --runs "${RUNS[@]}" --bootstrap "$BOOTSTRAP" --out "$OUT"
if [[ "$DS" = redial && " $VARIANTS " == *" people "* && " $VARIANTS " == *" cross-people "* ]]; then
  "$PY" benchmarks/compare_runs.py --split dev --runs "people=$BASE-people" "cross-people=$BASE-cross-people" \
    --bootstrap "$BOOTSTRAP" --out "${OUT_CROSS:-docs/results/signals_${DS}_cross.md}"
fi
if [[ " $VARIANTS " == *" lora "* && " $VARIANTS " == *" lossy "* ]]; then
  "$PY" benchmarks/compare_runs.py --split dev --runs "lora=$BASE-lora" "lossy=$BASE-lossy" --bootstrap "$BOOTSTRAP" \
    --out "${OUT_LOSSY:-docs/results/signals_${DS}_lossy.md}"
fi
