#!/usr/bin/env bash
# Process each domain's raw files into traindata/<d>.jsonl and testdata/<d>.jsonl (+ items, stats, valid).
set -euo pipefail
cd "$(dirname "$0")/.."

RAW_DIR=${RAW_DIR:-raw/amazon2014}
TRAIN_DIR=${TRAIN_DIR:-traindata}
TEST_DIR=${TEST_DIR:-testdata}
DOMAINS=${DOMAINS:-"beauty sports clothing food"}
TRAIN_SAMPLES=${TRAIN_SAMPLES:-30000}  # training samples in each train file
VALID_SAMPLES=${VALID_SAMPLES:--1}     # validation samples in each train file (-1: all)
TEST_USERS=${TEST_USERS:-0}            # users in each test file (0: all)
HISTORY=${HISTORY:-20}                 # most recent items in a prompt (0: all)
ANSWER_ITEMS=${ANSWER_ITEMS:-5}        # titles in a training answer (5: target + 4 negatives; 1: the target)
SEED=${SEED:-42}
EXTRA_ARGS=${EXTRA_ARGS:-}             # e.g. --refilter-5core
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

for domain in $DOMAINS; do
    # shellcheck disable=SC2086  # EXTRA_ARGS is a list
    "$PYTHON" -m data_process.process --raw-dir "$RAW_DIR" --domain "$domain" \
        --train-dir "$TRAIN_DIR" --test-dir "$TEST_DIR" --train-samples "$TRAIN_SAMPLES" \
        --valid-samples "$VALID_SAMPLES" --test-users "$TEST_USERS" --history "$HISTORY" \
        --answer-items "$ANSWER_ITEMS" --seed "$SEED" $EXTRA_ARGS
done
