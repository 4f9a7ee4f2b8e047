#!/usr/bin/env bash
# The embedded default base model, used where Qwen2-7B-Instruct cannot run: a tokenizer trained on the
# domains' titles, a tiny Qwen2 and its next-title pre-training. Reads $DATA_DIR/<d>.items.jsonl and <d>.jsonl,
# writes the HF model folder $MODEL (models/build_base.py).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

DATA_DIR=${DATA_DIR:-traindata}
DOMAINS=${DOMAINS:-"sports beauty toys"}
MODEL=${MODEL:-models/tiny-qwen2}
SEED=${SEED:-42}
BASE_STEPS=${BASE_STEPS:-1000}   # pre-training steps
EXTRA_ARGS=${EXTRA_ARGS:-}       # more options, e.g. "--hidden-size 256 --layers 4 --max-minutes 5"

echo "[build_model] $MODEL from $DOMAINS in $DATA_DIR ($BASE_STEPS pre-training steps)"
split_list domains "$DOMAINS"
split_list extra "$EXTRA_ARGS"
"$PYTHON" -m models.build_base --train-dir "$DATA_DIR" --domains "${domains[@]}" --out "$MODEL" \
  --seed "$SEED" --steps "$BASE_STEPS" "${extra[@]}"
