#!/usr/bin/env bash
# The whole WeaveRec pipeline in one command, on the embedded default (synthetic Amazon-like data,
# a tiny Qwen2 built here, CPU): set-up -> data -> base model -> target-only + hybrid LoRAs through
# LLaMA-Factory -> WeaveRec merge -> ranking on the target's test users -> metrics report.
# On real data: RAW_DIR=../shared/data/amazon2014 TARGET=sports SOURCES="beauty toys" bash scripts/quickstart.sh
set -euo pipefail
cd "$(dirname "$0")/.."

RAW_DIR=${RAW_DIR:-raw/synthetic}
TARGET=${TARGET:-sports}
SOURCES=${SOURCES:-"beauty toys"}
TRAIN_SAMPLES=${TRAIN_SAMPLES:-3000}      # training samples per source domain file
TARGET_SAMPLES=${TARGET_SAMPLES:-300}     # training (and validation) samples in the target's file: a
                                          # data-poor target, the setting cross-domain transfer is for
TEST_USERS=${TEST_USERS:-300}             # test users of the target (seeded sample)
HISTORY=${HISTORY:-10}                    # most recent history items in a prompt
TAG=${TAG:-$(basename "$RAW_DIR")}        # keeps models and modules of different data apart
TRAIN_DIR=${TRAIN_DIR:-traindata}
TEST_DIR=${TEST_DIR:-testdata}
if [ "$TAG" = synthetic ]; then
  MODEL=${MODEL:-models/tiny-qwen2}; SAVE_DIR=${SAVE_DIR:-save}
else
  MODEL=${MODEL:-models/tiny-qwen2-$TAG}; SAVE_DIR=${SAVE_DIR:-save/$TAG}
fi
BASE_STEPS=${BASE_STEPS:-1000}            # pre-training steps of the tiny base model
MODE=${MODE:-score}                       # free | constrained | score
ROWS=${ROWS:-"target_only hybrids weaverec"}   # all rows: see scripts/compare.sh
GRID=${GRID-}                             # target weights to try on validation users (compare.sh)
RUN_DIR=${RUN_DIR:-result/quickstart_${TAG}_${TARGET}}
SEED=${SEED:-42}

start=$SECONDS
step() { echo; echo "=== [quickstart $((SECONDS - start))s] $*"; }

step "environment"
bash scripts/setup.sh

if [ "$TAG" = synthetic ] && [ ! -f "$RAW_DIR/reviews_Sports_and_Outdoors_5.json.gz" ]; then
  step "synthetic raw data -> $RAW_DIR"
  OUT_DIR=$RAW_DIR bash scripts/synthesize_data.sh
fi

step "per-domain data: $TARGET (target) $SOURCES"
TRAIN_DIR=$TRAIN_DIR TEST_DIR=$TEST_DIR RAW_DIR=$RAW_DIR DOMAINS="$TARGET" TRAIN_SAMPLES=$TARGET_SAMPLES VALID_SAMPLES=$TARGET_SAMPLES \
  TEST_USERS=$TEST_USERS HISTORY=$HISTORY SEED=$SEED bash scripts/make_data.sh
TRAIN_DIR=$TRAIN_DIR TEST_DIR=$TEST_DIR RAW_DIR=$RAW_DIR DOMAINS="$SOURCES" TRAIN_SAMPLES=$TRAIN_SAMPLES TEST_USERS=$TEST_USERS \
  HISTORY=$HISTORY SEED=$SEED bash scripts/make_data.sh

step "hybrid data: $TARGET + each of $SOURCES"
TRAIN_DIR=$TRAIN_DIR TARGET=$TARGET SOURCES=$SOURCES SEED=$SEED ALL_MIXED=1 bash scripts/construct.sh

if [ -f "$MODEL/config.json" ]; then
  step "base model: $MODEL exists, kept (delete it to rebuild)"
else
  step "base model -> $MODEL"
  TRAIN_DIR=$TRAIN_DIR DOMAINS="$TARGET $SOURCES" OUT=$MODEL STEPS=$BASE_STEPS bash scripts/build_model.sh
fi

step "LoRA modules, merge, ranking, metrics"
TARGET=$TARGET SOURCES=$SOURCES MODEL=$MODEL SAVE_DIR=$SAVE_DIR RUN_DIR=$RUN_DIR ROWS=$ROWS MODE=$MODE \
  GRID=$GRID DATA_DIR=$TRAIN_DIR TEST_DIR=$TEST_DIR bash scripts/compare.sh

step "done in $((SECONDS - start))s: report in $RUN_DIR/metrics.md and $RUN_DIR/metrics.png"
