#!/usr/bin/env bash
# Rebuild the recommender shipped in src/reges/shipped/redial/ from trained ReDial runs.
# Usage: scripts/ship_redial.sh [trained-run] [item-expert-run]
#   trained-run      default runs/redial (made by `reges all --config configs/redial.yaml`): catalog, index, Query
#                    Expert, co-mention prior
#   item-expert-run  default the trained run: the run whose train-item adapter ships; "none" ships no Item Expert.
#                    Its rank-mode fusion alpha is tuned again here, on the tune split, against the shipped
#                    retriever's scores (the alpha fuses z-scores of exactly that retriever), and ships in
#                    generate/manifest.json
# The shipped fusion uses the bundled MiniLM (a fine-tuned encoder is 90 MB), so train-retriever is redone with
# train_retriever.finetune=false in runs/redial-ship, which links the trained run's other stages.
# Run it on a fresh runs/redial-ship (delete it first): complete stages are not redone.
set -euo pipefail
RUN=${1:-runs/redial}
ITEM_RUN=${2:-$RUN}
S=runs/redial-ship
REGES=${REGES:-.venv/bin/reges}
mkdir -p $S
for st in data catalog index distill train-query rewrite mine; do [ -e $S/$st ] || ln -s "$(realpath $RUN/$st)" $S/$st; done
R="--config configs/redial.yaml --run-dir $S"
if [ "$ITEM_RUN" != none ]; then
  rm -f $S/train-item && ln -s "$(realpath $ITEM_RUN/train-item)" $S/train-item
  OBJECTIVE=$(.venv/bin/python -c "import json,sys; print(json.load(open(sys.argv[1]))['config']['objective'])" \
    "$ITEM_RUN/train-item/manifest.json")
  R="$R train_item.objective=$OBJECTIVE"
fi
$REGES train-retriever $R train_retriever.finetune=false
if [ "$ITEM_RUN" != none ]; then
  $REGES retrieve $R 'retrieve.splits=[tune,dev]'
  $REGES generate $R generate.mode=rank 'generate.splits=[dev]'   # alpha tuned on tune; dev picks for evaluate
else
  $REGES retrieve $R 'retrieve.splits=[dev]'   # dev numbers of the shipped variant
fi
$REGES evaluate $R
.venv/bin/python - <<'PY'
from pathlib import Path
from reges.io import RunDir
from reges.shipped import SHIPPED_ROOT, export_run
export_run(RunDir("runs/redial-ship"), SHIPPED_ROOT / "redial", Path("scripts/shipped_sources.md").read_text())
PY
