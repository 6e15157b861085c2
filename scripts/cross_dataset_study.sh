#!/usr/bin/env bash
# Cross-dataset signals for INSPIRED (docs/results/cross_dataset.md): ReDial's train dialogues and its lossy
# file, matched to the INSPIRED catalog by title, counted in the co-mention prior; and ReDial's ordered train
# dialogues as encoder pairs. The runs share data .. rewrite of BASE (a complete run of configs/inspired.yaml
# through retrieve):
#   nocross:    train_retriever.cross_dataset=null (BASE's own retrieval, re-evaluated)
#   cross:      + ReDial's co-mentions (train-retriever re-fits counts and fusion weights; the encoder checkpoint is
#               reused because its fingerprint does not depend on the counts), then retrieve
#   crosspairs: + ReDial's (dialogue, film) pairs in the encoder's fine-tuning (train_retriever.cross_pairs=true:
#               the encoder is retrained), then retrieve
#   bash scripts/cross_dataset_study.sh runs/inspired [runs-root]
# VARIANTS (default "nocross cross crosspairs") picks the runs.
# CONFIG (default configs/inspired.yaml) and NAME (default inspired: the runs are ROOT/NAME-nocross, ROOT/NAME-cross)
# let scripts/reproduce.sh smoke run it on configs/tiny.yaml.
set -euo pipefail
cd "${REGES_ROOT:-$(dirname "$0")/..}"
BASE=${1:?usage: cross_dataset_study.sh BASE-RUN [runs-root]}
ROOT=${2:-runs}
REGES=${REGES:-.venv/bin/reges}
CONFIG=${CONFIG:-configs/inspired.yaml}
NAME=${NAME:-inspired}
COMMON=(run.threads=1)
VARIANTS=${VARIANTS:-nocross cross crosspairs}
S=../shared/data/redial
CROSS=(train_retriever.cross_dataset.format=redial
       "train_retriever.cross_dataset.files=[$S/Lancelot39__KGSF/data/valid_data.jsonl, $S/txy77__iEvaLM-CRS/data/redial/valid_data.jsonl]"
       train_retriever.cross_dataset.movie_names_file=$S/Kim-Dong-Jun99__ReDial_RecommendationSystem/dataset/movies_with_mentions.csv
       train_retriever.cross_dataset.lossy_file=$S/MarkystarkDotCO__Redial-QA-System/src/download_data/precessed.json.zip)
for variant in $VARIANTS; do
  RUN=$ROOT/$NAME-$variant
  mkdir -p "$RUN"
  for stage in data catalog index distill train-query rewrite train-retriever retrieve; do
    if [ ! -e "$RUN/$stage" ]; then cp -r "$BASE/$stage" "$RUN/$stage"; fi
  done
  [ -f "$RUN/config.yaml" ] || cp "$BASE/config.yaml" "$RUN/config.yaml"
  EXTRA=(); [ "$variant" = nocross ] || EXTRA=("${CROSS[@]}")
  MARK='"matched_exact"'
  if [ "$variant" = crosspairs ]; then EXTRA+=(train_retriever.cross_pairs=true); MARK='"targets_matched"'; fi
  # Each step is redone when what it reads is newer (BASE may predate stage fingerprints, which `reges status` needs)
  if [ "$variant" != nocross ] && ! grep -q "$MARK" "$RUN/train-retriever/manifest.json"; then
    "$REGES" train-retriever --config "$CONFIG" --run-dir "$RUN" "${COMMON[@]}" "${EXTRA[@]}" run.overwrite=true
  fi
  prev=train-retriever
  for stage in retrieve evaluate; do
    if [ ! -f "$RUN/$stage/manifest.json" ] || [ "$RUN/$prev/manifest.json" -nt "$RUN/$stage/manifest.json" ]; then
      "$REGES" "$stage" --config "$CONFIG" --run-dir "$RUN" "${COMMON[@]}" "${EXTRA[@]}" run.overwrite=true
    fi
    prev=$stage
  done
done
