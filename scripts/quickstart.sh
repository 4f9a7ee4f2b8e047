#!/usr/bin/env bash
# The whole WeaveRec pipeline in one command, on the embedded default (synthetic Amazon-like data,
# a tiny Qwen2 built here, CPU): set-up -> data -> base model -> target-only + hybrid LoRAs through
# LLaMA-Factory -> WeaveRec merge -> ranking on the target's test users -> metrics report, next to
# the alternatives of scripts/compare.sh (ROWS="target_only hybrids weaverec" GRID="" for the minimum).
# On real data: RAW_DIR=../shared/data/amazon2014 TARGET=sports SOURCES="beauty toys" bash scripts/quickstart.sh
set -euo pipefail
cd "$(dirname "$0")/.."

RAW_DIR=${RAW_DIR:-raw/synthetic}
TARGET=${TARGET:-sports}
SOURCES=${SOURCES:-"beauty toys"}
TRAIN_SAMPLES=${TRAIN_SAMPLES:-3000}      # training samples per domain file (+ every validation sample)
TARGET_SAMPLES=${TARGET_SAMPLES:-$TRAIN_SAMPLES}  # fewer for a data-poor target, e.g. 1000
TARGET_VALID=${TARGET_VALID:--1}          # validation samples in the target's train file (-1: all)
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
BACKEND=${BACKEND:-auto}                  # hf | vllm | auto: vllm where .venv-vllm exists (VLLM=1 builds it)
VLLM=${VLLM:-0}                           # 1: build .venv-vllm too (scripts/setup.sh)
ROWS=${ROWS:-"target_only hybrids mixed_all naive_merge weaverec ties dare_ties task_arithmetic"}
GRID=${GRID-"0 1 2 3"}                    # target weights tried on validation users ("" = off)
RUN_DIR=${RUN_DIR:-result/quickstart_${TAG}_${TARGET}}
SEED=${SEED:-42}

start=$SECONDS
step() { echo; echo "=== [quickstart $((SECONDS - start))s] $*"; }

step "environment"
VLLM=$VLLM bash scripts/setup.sh

if [ "$TAG" = synthetic ] && [ ! -f "$RAW_DIR/reviews_Sports_and_Outdoors_5.json.gz" ]; then
  step "synthetic raw data -> $RAW_DIR"
  OUT_DIR=$RAW_DIR bash scripts/synthesize_data.sh
fi

step "per-domain data: $TARGET (target) $SOURCES"
TRAIN_DIR=$TRAIN_DIR TEST_DIR=$TEST_DIR RAW_DIR=$RAW_DIR DOMAINS="$TARGET" TRAIN_SAMPLES=$TARGET_SAMPLES VALID_SAMPLES=$TARGET_VALID \
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
  BACKEND=$BACKEND GRID=$GRID DATA_DIR=$TRAIN_DIR TEST_DIR=$TEST_DIR bash scripts/compare.sh

step "done in $((SECONDS - start))s: report in $RUN_DIR/metrics.md and $RUN_DIR/metrics.png"
