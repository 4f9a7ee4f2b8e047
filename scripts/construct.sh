#!/usr/bin/env bash
# Build the hybrid training files traindata/<TARGET>_<SOURCE>.jsonl and register them for LLaMA-Factory.
set -euo pipefail
cd "$(dirname "$0")/.."

TRAIN_DIR=${TRAIN_DIR:-traindata}
TARGET=${TARGET:-sports}
SOURCES=${SOURCES:-"beauty clothing"}
CAP=${CAP:-40000}           # lines taken from each domain's file
SEED=${SEED:-42}
ALL_MIXED=${ALL_MIXED:-0}   # 1: also write <TARGET>_<S1>_<S2>... (naive mixed training)
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

mixed=()
if [ "$ALL_MIXED" = 1 ]; then mixed=(--all-mixed); fi
# shellcheck disable=SC2086  # SOURCES is a list
"$PYTHON" -m data_process.construct --train-dir "$TRAIN_DIR" --target "$TARGET" --sources $SOURCES \
    --cap "$CAP" --seed "$SEED" "${mixed[@]}"
