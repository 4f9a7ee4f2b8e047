#!/usr/bin/env bash
# Build the embedded default base model (tokenizer + tiny Qwen2 + next-title pre-training) from the
# processed domains: reads $TRAIN_DIR/<d>.items.jsonl and <d>.jsonl, writes $OUT (an HF model folder).
set -euo pipefail
cd "$(dirname "$0")/.."

TRAIN_DIR=${TRAIN_DIR:-traindata}
DOMAINS=${DOMAINS:-"sports beauty toys"}
OUT=${OUT:-models/tiny-qwen2}
SEED=${SEED:-0}
STEPS=${STEPS:-600}
EXTRA=${EXTRA:-}                # more options, e.g. "--hidden-size 256 --layers 4 --max-minutes 5"
if [ -x .venv/bin/python ]; then PYTHON=${PYTHON:-.venv/bin/python}; else PYTHON=${PYTHON:-python3}; fi

read -r -a domains <<< "$DOMAINS"
read -r -a extra <<< "$EXTRA"
"$PYTHON" -m models.build_base --train-dir "$TRAIN_DIR" --domains "${domains[@]}" --out "$OUT" \
  --seed "$SEED" --steps "$STEPS" "${extra[@]}"
