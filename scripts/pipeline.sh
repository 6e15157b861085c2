#!/usr/bin/env bash
# The whole pipeline, stage by stage: living documentation of what `reges all` does.
# Usage: scripts/pipeline.sh [config] [run-dir]    (defaults: configs/inspired.yaml runs/inspired)
# Each stage reads the earlier stages' files from the run directory and ends with a manifest.json;
# re-running skips nothing here (each command refuses to redo a complete stage unless run.overwrite=true).
set -euo pipefail
CONFIG=${1:-configs/inspired.yaml}
RUN=${2:-runs/inspired}
REGES=${REGES:-.venv/bin/reges}

$REGES data            --config "$CONFIG" --run-dir "$RUN"  # dataset files -> data/{train,tune,dev}.jsonl (+ dialogues)
$REGES catalog         --config "$CONFIG" --run-dir "$RUN"  # item metadata -> catalog/items.jsonl (text cards)
$REGES index           --config "$CONFIG" --run-dir "$RUN"  # cards -> index/ (frozen encoder, FAISS + item ids)
$REGES distill         --config "$CONFIG" --run-dir "$RUN"  # grounded teacher queries, kept by retrieval feedback
$REGES train-query     --config "$CONFIG" --run-dir "$RUN"  # Query Expert: LoRA on dialogue -> pseudo-query
$REGES rewrite         --config "$CONFIG" --run-dir "$RUN"  # the Query Expert writes queries for tune and dev
$REGES train-retriever --config "$CONFIG" --run-dir "$RUN"  # fine-tuned encoder + co-mention prior, fusion tuned on tune
$REGES retrieve        --config "$CONFIG" --run-dir "$RUN"  # fused top-k candidates -> retrieve/{split}.trec
$REGES mine            --config "$CONFIG" --run-dir "$RUN"  # Item Expert training data from the retrieved hard negatives
$REGES train-item      --config "$CONFIG" --run-dir "$RUN"  # Item Expert: LoRA on (dialogue, candidates) -> title
$REGES generate        --config "$CONFIG" --run-dir "$RUN"  # the Item Expert picks one candidate per dev example
$REGES evaluate        --config "$CONFIG" --run-dir "$RUN"  # recall@k, success, hallucination, baselines -> report.md
