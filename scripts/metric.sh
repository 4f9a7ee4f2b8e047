#!/usr/bin/env bash
# Score every run's predictions on one target domain: result/<run>/output.jsonl -> $OUT_DIR/metrics.{json,md,png}.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=${TARGET:-sports}
TEST_FILE=${TEST_FILE:-testdata/${TARGET}.jsonl}
PRED_DIR=${PRED_DIR:-result}          # every */output.jsonl and *.jsonl directly inside
PREDICTIONS=${PREDICTIONS:-}          # or a list of files, used instead of PRED_DIR
NAMES=${NAMES:-}                      # one name per file in PREDICTIONS (default: run folder names)
ITEMS=${ITEMS:-traindata/${TARGET}.items.jsonl}  # popularity baseline; skipped if the file is missing
OUT_DIR=${OUT_DIR:-result/metrics_${TARGET}}
COMPARE=${COMPARE:-}                  # "NAME_A NAME_B": paired A - B (default: the best file - each row)
REFERENCE=${REFERENCE:-}              # or: every row - this one
MATCH=${MATCH:-trim}                  # exact (the published code) | trim | casefold
SEED=${SEED:-0}
BOOTSTRAP=${BOOTSTRAP:-1000}
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

args=(--test-file "$TEST_FILE" --out-dir "$OUT_DIR" --match "$MATCH" --seed "$SEED" --bootstrap "$BOOTSTRAP")
# shellcheck disable=SC2206  # PREDICTIONS, NAMES and COMPARE are lists
if [ -n "$PREDICTIONS" ]; then args+=(--predictions $PREDICTIONS); else args+=(--pred-dir "$PRED_DIR"); fi
# shellcheck disable=SC2206
if [ -n "$NAMES" ]; then args+=(--names $NAMES); fi
if [ -f "$ITEMS" ]; then args+=(--items "$ITEMS"); else echo "note: no $ITEMS, no popularity baseline" >&2; fi
# shellcheck disable=SC2206
if [ -n "$COMPARE" ]; then args+=(--compare $COMPARE); fi
if [ -n "$REFERENCE" ]; then args+=(--reference "$REFERENCE"); fi
"$PYTHON" -m metric.metric "${args[@]}"
