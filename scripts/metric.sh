#!/usr/bin/env bash
# Step 6 of 6. Score every run's predictions on one target domain: result/<run>/output.jsonl ->
# $REPORT_DIR/metrics.{json,md,png} (NDCG@1/3/5, MRR, HR@k, intervals, paired tests, baselines).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

TARGET=${TARGET:-sports}
DATA_DIR=${DATA_DIR:-traindata}
TEST_DIR=${TEST_DIR:-testdata}
TEST_FILE=${TEST_FILE:-$TEST_DIR/$TARGET.jsonl}
PRED_DIR=${PRED_DIR:-result}          # every */output.jsonl and *.jsonl directly inside
PREDICTIONS=${PREDICTIONS:-}          # or a list of files, used instead of PRED_DIR
NAMES=${NAMES:-}                      # one name per file in PREDICTIONS (default: run folder names)
ITEMS=${ITEMS:-$DATA_DIR/$TARGET.items.jsonl}  # popularity baseline; skipped if the file is missing
REPORT_DIR=${REPORT_DIR:-result/metrics_$TARGET}
COMPARE=${COMPARE:-}                  # "NAME_A NAME_B": paired A - B (default: the best file - each row)
REFERENCE=${REFERENCE:-}              # or: every row - this one
MATCH=${MATCH:-trim}                  # exact (the published code) | trim | casefold
SEED=${SEED:-42}
BOOTSTRAP=${BOOTSTRAP:-1000}

step 6 "metrics of ${PREDICTIONS:-$PRED_DIR} on $TEST_FILE -> $REPORT_DIR"
args=(--test-file "$TEST_FILE" --out-dir "$REPORT_DIR" --match "$MATCH" --seed "$SEED" --bootstrap "$BOOTSTRAP")
split_list predictions "$PREDICTIONS"
split_list names "$NAMES"
split_list compare "$COMPARE"
if [ -n "$PREDICTIONS" ]; then args+=(--predictions "${predictions[@]}"); else args+=(--pred-dir "$PRED_DIR"); fi
if [ -n "$NAMES" ]; then args+=(--names "${names[@]}"); fi
if [ -f "$ITEMS" ]; then args+=(--items "$ITEMS"); else echo "note: no $ITEMS, no popularity baseline" >&2; fi
if [ -n "$COMPARE" ]; then args+=(--compare "${compare[@]}"); fi
if [ -n "$REFERENCE" ]; then args+=(--reference "$REFERENCE"); fi
"$PYTHON" -m metric.metric "${args[@]}"
