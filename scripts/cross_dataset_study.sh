#!/usr/bin/env bash
# ReDial's dialogues as co-mention evidence for INSPIRED (docs/results/cross_dataset.md): ReDial's train dialogues
# and its lossy file, matched to the INSPIRED catalog by title, counted in the co-mention prior. Two runs share
# data .. rewrite of BASE (a complete run of configs/inspired.yaml through retrieve), each made by
# scripts/retrieval_variant.sh with every other retrieval signal off (people, cross-dataset encoder pairs):
#   nocross:  train_retriever.cross_dataset=null
#   cross:    ReDial's co-mentions (train_retriever.cross_dataset.*, the four keys below)
# The encoder of both is the one trained without cross-dataset pairs (retrained once when BASE's used them, then
# reused: its fingerprint does not depend on the counts). The pairs and the other signals: scripts/signal_study.sh.
#   bash scripts/cross_dataset_study.sh runs/inspired [runs-root]
# CONFIG (default configs/inspired.yaml) and NAME (default inspired: the runs are ROOT/NAME-nocross, ROOT/NAME-cross)
# let scripts/reproduce.sh smoke run it on configs/tiny.yaml.
set -euo pipefail
cd "${REGES_ROOT:-$(dirname "$0")/..}"
BASE=${1:?usage: cross_dataset_study.sh BASE-RUN [runs-root]}
ROOT=${2:-runs}
export REGES=${REGES:-.venv/bin/reges}
export CONFIG=${CONFIG:-configs/inspired.yaml}
NAME=${NAME:-inspired}
S=../shared/data/redial
OFF=(train_retriever.people=false train_retriever.content=false train_retriever.cross_pairs=false)
CROSS=(train_retriever.cross_dataset.format=redial
       "train_retriever.cross_dataset.files=[$S/Lancelot39__KGSF/data/valid_data.jsonl, $S/txy77__iEvaLM-CRS/data/redial/valid_data.jsonl]"
       train_retriever.cross_dataset.movie_names_file=$S/Kim-Dong-Jun99__ReDial_RecommendationSystem/dataset/movies_with_mentions.csv
       train_retriever.cross_dataset.lossy_file=$S/MarkystarkDotCO__Redial-QA-System/src/download_data/precessed.json.zip)
bash scripts/retrieval_variant.sh "$BASE" "$ROOT/$NAME-nocross" "${OFF[@]}" train_retriever.cross_dataset=null
# the cross run starts from the nocross run: its encoder checkpoint (trained without cross pairs) is reused
bash scripts/retrieval_variant.sh "$ROOT/$NAME-nocross" "$ROOT/$NAME-cross" "${OFF[@]}" "${CROSS[@]}"
