#!/usr/bin/env bash
# Step 2 of 6. Process each domain's raw files into $DATA_DIR/<d>.jsonl and $TEST_DIR/<d>.jsonl (+ items,
# stats, the validation file) and register them in $DATA_DIR/dataset_info.json; see docs/data.md.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

RAW_DIR=${RAW_DIR:-raw/amazon2014}
DATA_DIR=${DATA_DIR:-traindata}
TEST_DIR=${TEST_DIR:-testdata}
DOMAINS=${DOMAINS:-"sports beauty toys"}
TRAIN_SAMPLES=${TRAIN_SAMPLES:-30000}  # training samples in each train file
VALID_SAMPLES=${VALID_SAMPLES:--1}     # validation samples in each train file (-1: all)
TEST_USERS=${TEST_USERS:-0}            # users in each test file (0: all)
HISTORY=${HISTORY:-20}                 # most recent items in a prompt (0: all)
ANSWER_ITEMS=${ANSWER_ITEMS:-5}        # titles in a training answer (5: target + 4 negatives; 1: the target)
TITLE_WORDS=${TITLE_WORDS:-0}          # first words of each title kept (0: whole titles; statistics unchanged)
SEED=${SEED:-42}
EXTRA_ARGS=${EXTRA_ARGS:-}             # more data_process.process options, e.g. --refilter-5core

step 2 "per-domain samples of $DOMAINS: $RAW_DIR -> $DATA_DIR, $TEST_DIR"
split_list domains "$DOMAINS"
split_list extra "$EXTRA_ARGS"
for domain in "${domains[@]}"; do
  "$PYTHON" -m data_process.process --raw-dir "$RAW_DIR" --domain "$domain" \
    --train-dir "$DATA_DIR" --test-dir "$TEST_DIR" --train-samples "$TRAIN_SAMPLES" \
    --valid-samples "$VALID_SAMPLES" --test-users "$TEST_USERS" --history "$HISTORY" \
    --answer-items "$ANSWER_ITEMS" --title-words "$TITLE_WORDS" --seed "$SEED" "${extra[@]}"
done
