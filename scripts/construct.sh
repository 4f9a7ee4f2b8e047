#!/usr/bin/env bash
# Step 3 of 6. Build the hybrid training files $DATA_DIR/<TARGET>_<SOURCE>.jsonl (ALL_MIXED=1: also the naive
# all-domain mix <TARGET>_<S1>_<S2>...) and register them for LLaMA-Factory; see docs/data.md.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

DATA_DIR=${DATA_DIR:-traindata}
TARGET=${TARGET:-sports}
SOURCES=${SOURCES:-"beauty toys"}
CAP=${CAP:-40000}           # lines taken from each domain's file
SEED=${SEED:-42}
ALL_MIXED=${ALL_MIXED:-0}   # 1: also write <TARGET>_<S1>_<S2>... (naive mixed training)

step 3 "hybrid data: $TARGET + each of $SOURCES in $DATA_DIR"
split_list sources "$SOURCES"
mixed=(); if [ "$ALL_MIXED" = 1 ]; then mixed=(--all-mixed); fi
"$PYTHON" -m data_process.construct --train-dir "$DATA_DIR" --target "$TARGET" --sources "${sources[@]}" \
  --cap "$CAP" --seed "$SEED" "${mixed[@]}"
