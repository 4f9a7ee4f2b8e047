#!/usr/bin/env bash
# The whole WeaveRec pipeline in one command, on the embedded default (synthetic Amazon-like data, a tiny
# Qwen2 built here, CPU): set-up -> data (steps 2-3) -> base model -> target-only + hybrid LoRAs through
# LLaMA-Factory (step 4) -> WeaveRec merge and the alternatives (step 5, scripts/compare.sh) -> metrics (step 6).
# A preset: its sizes are small on purpose and override the stages' defaults.
# On real data: DATA=../shared/data/amazon2014 bash scripts/quickstart.sh
# Several seeds: SEEDS="42 1 2 3 4" bash scripts/quickstart.sh runs the whole scenario once per seed (SEED
# seeds everything random: the synthetic world, the test users and candidates, the base model, the LoRA
# modules' training, DARE, the learned weights' split, the baselines and the bootstrap), each seed in its
# own folders (seed 42, the default, has no suffix; others end in _seed<N>), its report in
# $SEEDS_DIR/seed<N>/, then $SEEDS_DIR/summary.{md,json,png}: mean and spread over seeds (metric/seeds.py).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

SEED=${SEED:-42}
SEEDS=${SEEDS:-}                          # "42 1 2": one run per seed, then their summary (see above)
if [ "$SEED" = 42 ]; then suffix=""; else suffix="_seed$SEED"; fi
DATA=${DATA:-synthetic}                   # synthetic (written to SYNTH_DIR) | a folder of Amazon raw files
SYNTH_DIR=${SYNTH_DIR:-raw/synthetic$suffix}
SYNTH_SEED=${SYNTH_SEED:-$SEED}           # the synthetic world's seed
# The two halves of WeaveRec's claim, one run each (docs/results.md), on the synthetic data, whose beauty
# follows the target's rule and toys a conflicting one (scripts/synthesize_data.sh):
#   transfer  a data-poor target (100 training + 100 validation samples) and the agreeing source beauty
#             (600 + 200): the hybrid and WeaveRec should beat target-only;
#   conflict  a target of 450 + 300 samples and the conflicting source toys (2,000 + 200), built so that its
#             hybrid and the naive merge fall below target-only and WeaveRec does not; across seeds 42 1 2
#             the hybrid stayed above target-only (docs/results.md: the negative transfer was not found).
SCENARIO=${SCENARIO:-transfer}            # transfer | conflict: sets the sizes and SOURCES below
case $SCENARIO in
  transfer) s_sources=beauty; s_target=100; s_target_valid=100; s_train=600; s_valid=200 ;;
  conflict) s_sources=toys; s_target=450; s_target_valid=300; s_train=2000; s_valid=200 ;;
  *) echo "error: SCENARIO=$SCENARIO: use transfer or conflict" >&2; exit 2 ;;
esac
TARGET=${TARGET:-sports}
SOURCES=${SOURCES:-$s_sources}
TRAIN_SAMPLES=${TRAIN_SAMPLES:-$s_train}  # training samples per source file
VALID_SAMPLES=${VALID_SAMPLES:-$s_valid}  # validation samples per source file (-1: all)
TARGET_SAMPLES=${TARGET_SAMPLES:-$s_target}  # training samples in the target's file
TARGET_VALID=${TARGET_VALID:-$s_target_valid}   # validation samples in the target's file (-1: all)
TEST_USERS=${TEST_USERS:-600}             # test users of the target (seeded sample)
HISTORY=${HISTORY:-10}                    # most recent history items in a prompt
ANSWER_ITEMS=${ANSWER_ITEMS:-1}           # titles in a training answer: the target alone (docs/results.md)
TITLE_WORDS=${TITLE_WORDS:-0}             # first words of each title kept (0: whole titles)
if [ "$DATA" = synthetic ]; then RAW_DIR=$SYNTH_DIR; TAG=synthetic; else RAW_DIR=$DATA; TAG=$(basename "$DATA"); fi
# each scenario (or real data set) has its own data, base model and modules: the two scenarios write
# different sports files, and a shared folder would make one run retrain the other's modules
if [ "$TAG" = synthetic ]; then RUN_TAG=$SCENARIO$suffix; else RUN_TAG=$TAG$suffix; fi
DATA_DIR=${DATA_DIR:-traindata/$RUN_TAG}
TEST_DIR=${TEST_DIR:-testdata/$RUN_TAG}
MODEL=${MODEL:-models/tiny-qwen2-$RUN_TAG}
SAVE_DIR=${SAVE_DIR:-save/$RUN_TAG}
BASE_STEPS=${BASE_STEPS:-1000}            # pre-training steps of the tiny base model
PARALLEL=${PARALLEL:-3}                   # LoRA modules trained at once (CPU: 1.25x faster, the same adapters)
MODE=${MODE:-score}                       # free | constrained | score
BACKEND=${BACKEND:-auto}                  # hf | vllm | auto: vllm where .venv-vllm exists (VLLM=1 builds it)
VLLM=${VLLM:-0}                           # 1: build .venv-vllm too (scripts/setup.sh)
ROWS=${ROWS:-"base target_only hybrids mixed_all naive_merge weaverec weaverec_likelihood ties dare_ties task_arithmetic"}
GRID=${GRID-"0 1 2 3"}                    # target weights tried on validation users ("" = off)
RUN_DIR=${RUN_DIR:-result/quickstart_${TAG}_${TARGET}_$SCENARIO$suffix}
SEEDS_DIR=${SEEDS_DIR:-result/${RUN_TAG%"$suffix"}_seeds}
USER_TRAIN_ARGS=${TRAIN_ARGS:-}
export TRAIN_ARGS="seed=$SEED${USER_TRAIN_ARGS:+ $USER_TRAIN_ARGS}"  # LLaMA-Factory's seed (initialisation, data order)

start=$SECONDS
stage() { echo "=== [quickstart $((SECONDS - start))s] $*"; }

if [ -n "$SEEDS" ]; then
  split_list seeds "$SEEDS"
  for s in "${seeds[@]}"; do
    if ! [[ "$s" =~ ^[0-9]+$ ]]; then echo "error: SEEDS=\"$SEEDS\": whole numbers, space-separated" >&2; exit 2; fi
  done
  for s in "${seeds[@]}"; do
    stage "seed $s of ${seeds[*]} -> $SEEDS_DIR/seed$s"
    # a finished seed's modules, merges and predictions are reused by the stages, an interrupted one resumed
    env -u SEEDS -u RUN_DIR -u SYNTH_DIR -u SYNTH_SEED -u DATA_DIR -u TEST_DIR -u MODEL -u SAVE_DIR \
      TRAIN_ARGS="$USER_TRAIN_ARGS" SEED="$s" RUN_DIR="$SEEDS_DIR/seed$s" bash scripts/quickstart.sh
  done
  stage "summary of seeds ${seeds[*]}"
  "$PYTHON" -m metric.seeds --runs "${seeds[@]/#/$SEEDS_DIR/seed}" --out-dir "$SEEDS_DIR"
  stage "done in $((SECONDS - start))s: $SEEDS_DIR/summary.md and summary.png"
  exit 0
fi

stage "environment"
VLLM=$VLLM bash scripts/setup.sh

# the synthetic files are remade when missing or written from another seed (their seed is stamped beside them)
if [ "$TAG" = synthetic ] && { [ ! -f "$RAW_DIR/reviews_Sports_and_Outdoors_5.json.gz" ] ||
     [ "$(cat "$RAW_DIR/synth_seed" 2>/dev/null)" != "$SYNTH_SEED" ]; }; then
  stage "synthetic raw data (seed $SYNTH_SEED) -> $RAW_DIR"
  rm -f "$RAW_DIR/synth_seed"
  SYNTH_DIR=$RAW_DIR SYNTH_SEED=$SYNTH_SEED bash scripts/synthesize_data.sh
  echo "$SYNTH_SEED" > "$RAW_DIR/synth_seed"
fi

stage "per-domain data: $TARGET (target) $SOURCES"
data=(DATA_DIR="$DATA_DIR" TEST_DIR="$TEST_DIR" RAW_DIR="$RAW_DIR" TEST_USERS="$TEST_USERS" HISTORY="$HISTORY"
      ANSWER_ITEMS="$ANSWER_ITEMS" TITLE_WORDS="$TITLE_WORDS" SEED="$SEED")
env "${data[@]}" DOMAINS="$TARGET" TRAIN_SAMPLES="$TARGET_SAMPLES" VALID_SAMPLES="$TARGET_VALID" bash scripts/make_data.sh
env "${data[@]}" DOMAINS="$SOURCES" TRAIN_SAMPLES="$TRAIN_SAMPLES" VALID_SAMPLES="$VALID_SAMPLES" bash scripts/make_data.sh

stage "hybrid data: $TARGET + each of $SOURCES"
DATA_DIR=$DATA_DIR TARGET=$TARGET SOURCES=$SOURCES SEED=$SEED ALL_MIXED=1 bash scripts/construct.sh

# the base model is kept when built from the same data, steps and seed (stamped in its folder), else rebuilt
base_stamp=$(cat "$DATA_DIR"/*.jsonl | sha256sum | cut -c1-16)" steps=$BASE_STEPS seed=$SEED domains=$TARGET $SOURCES"
if [ -f "$MODEL/config.json" ] && [ "$(cat "$MODEL/quickstart.stamp" 2>/dev/null)" = "$base_stamp" ]; then
  stage "base model: $MODEL built from the same data and seed, kept"
else
  stage "base model -> $MODEL"
  rm -f "$MODEL/quickstart.stamp"
  DATA_DIR=$DATA_DIR DOMAINS="$TARGET $SOURCES" MODEL=$MODEL BASE_STEPS=$BASE_STEPS SEED=$SEED bash scripts/build_model.sh
  echo "$base_stamp" > "$MODEL/quickstart.stamp"
fi

stage "LoRA modules, merges, ranking, metrics"
TARGET=$TARGET SOURCES=$SOURCES MODEL=$MODEL SAVE_DIR=$SAVE_DIR RUN_DIR=$RUN_DIR ROWS=$ROWS MODE=$MODE \
  BACKEND=$BACKEND GRID=$GRID DATA_DIR=$DATA_DIR TEST_DIR=$TEST_DIR PARALLEL=$PARALLEL SEED=$SEED bash scripts/compare.sh

stage "done in $((SECONDS - start))s: report in $RUN_DIR/metrics.md and $RUN_DIR/metrics.png"
