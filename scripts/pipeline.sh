#!/usr/bin/env bash
# The whole pipeline, stage by stage: living documentation of what `reges all` does.
# Usage: scripts/pipeline.sh [config] [run-dir]    (defaults: configs/inspired.yaml runs/inspired)
# Each stage reads the earlier stages' files from the run directory and ends with a manifest.json;
# re-running skips nothing here (each command refuses to redo a complete stage unless run.overwrite=true).
set -euo pipefail
CONFIG=${1:-configs/inspired.yaml}
RUN=${2:-runs/inspired}
REGES=${REGES:-.venv/bin/reges}

$REGES data     --config "$CONFIG" --run-dir "$RUN"   # dataset files -> data/{train,dev}.jsonl (+ dialogues)
$REGES catalog  --config "$CONFIG" --run-dir "$RUN"   # item metadata -> catalog/items.jsonl (text cards)
$REGES index    --config "$CONFIG" --run-dir "$RUN"   # cards -> index/index.faiss + item_ids.txt
$REGES retrieve --config "$CONFIG" --run-dir "$RUN"   # dialogue queries -> retrieve/{split}.trec
$REGES evaluate --config "$CONFIG" --run-dir "$RUN"   # recall@k + baselines -> evaluate/metrics.json, report.md
