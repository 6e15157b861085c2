#!/usr/bin/env bash
# Rebuild the recommender shipped in src/reges/shipped/redial/ from a trained ReDial run.
# Usage: scripts/ship_redial.sh [trained-run] [ship-run]
#   trained-run  default runs/redial (made by `reges all --config configs/redial.yaml`): its data, catalog, index and
#                Query Expert (distill, train-query, rewrite) are linked into the ship run; none of them depends on the
#                retriever.
#   ship-run     default runs/redial-ship: the run the bundle is exported from. Everything from train-retriever on is
#                built there by `reges all`, complete stages kept, so a rerun after an interruption, or a ship run
#                that is already complete (scripts/reproduce.sh's runs/redial-ship-variant is one), retrains nothing.
#   NO_ITEM_EXPERT=1  ship without the Item Expert (no mine, train-item, generate).
# The shipped fusion uses the bundled MiniLM (a fine-tuned encoder is 90 MB), so train-retriever is built with
# train_retriever.finetune=false. The Item Expert cannot be taken from the trained run: it learned to choose among
# the fine-tuned retriever's candidates (mine) and its fusion alpha fuses that retriever's scores, so the pipeline
# counts it as stale on the shipped retriever and `reges generate` refuses it. It is trained again in the ship run
# on the shipped retriever's candidates (mine, then train-item: hours on a CPU), and its rank-mode alpha is tuned
# on the tune split; it ships in generate/manifest.json.
set -euo pipefail
RUN=${1:-runs/redial}
S=${2:-runs/redial-ship}
REGES=${REGES:-.venv/bin/reges}
LINKED="data catalog index distill train-query rewrite"
mkdir -p "$S"
for st in $LINKED; do
  [ -e "$S/$st" ] || ln -s "$(realpath "$RUN/$st")" "$S/$st"
done
R=(--config configs/redial.yaml --run-dir "$S" train_retriever.finetune=false)
STATUS=$($REGES status "${R[@]}")   # what is complete, stale or still to build
echo "$STATUS"
# A linked stage that is not complete here would be redone through the link, inside the trained run: refuse.
if echo "$STATUS" | awk -v linked=" $LINKED " 'index(linked, " " $1 " ") && $2 != "complete" {bad = 1} END {exit !bad}'
then
  echo "ship_redial: a stage linked from $RUN is not complete under configs/redial.yaml (above); rebuild $RUN" >&2
  exit 1
fi
if [ "${NO_ITEM_EXPERT:-0}" = 1 ]; then
  R+=('retrieve.splits=[dev]')   # dev numbers of the shipped variant (no train candidates to mine)
  for st in train-retriever retrieve evaluate; do   # a stage command refuses to redo a complete stage: skip those
    [ -f "$S/$st/manifest.json" ] || $REGES "$st" "${R[@]}"
  done
else
  $REGES all "${R[@]}"   # train-retriever, retrieve, mine, train-item, generate (alpha tuned on tune), evaluate
fi
.venv/bin/python - "$S" <<'PY'
import sys
from pathlib import Path
from reges.io import RunDir
from reges.shipped import SHIPPED_ROOT, export_run
export_run(RunDir(sys.argv[1]), SHIPPED_ROOT / "redial", Path("scripts/shipped_sources.md").read_text())
PY
