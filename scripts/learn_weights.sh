#!/usr/bin/env bash
# Learn the WeaveRec merge weights (per adapted module by default) instead of setting them all to 1:
#   OBJECTIVE=likelihood  on the target's labelled validation samples (the cross-entropy of the candidate ranking);
#   OBJECTIVE=entropy     on unlabeled target prompts (the test prompts by default: no label is read).
# Writes $WEIGHTS_DIR/weights.json (what merge_lora --weights-file reads), report.json, objective.png, lambdas.png.
# Then merge with the same TEMPERATURE:
#   WEIGHTS_FILE=$WEIGHTS_DIR/weights.json TEMPERATURE=$TEMPERATURE bash scripts/merge_and_test.sh
# On a GPU: MODEL=models/Qwen2-7B-Instruct (bf16 forward and gradient checkpointing by default there; the weights
# stay float32); a micro-batch that runs out of memory is halved and the step redone.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

MODEL=${MODEL:-models/tiny-qwen2}
TARGET=${TARGET:-sports}
SOURCES=${SOURCES:-"beauty toys"}
SAVE_DIR=${SAVE_DIR:-save}
split_list sources "$SOURCES"
default_adapters="$SAVE_DIR/$TARGET"; for s in "${sources[@]}"; do default_adapters+=" $SAVE_DIR/$(hybrid_name "$TARGET" "$s")"; done
ADAPTERS=${ADAPTERS:-$default_adapters}  # target first
OBJECTIVE=${OBJECTIVE:-likelihood}        # likelihood | entropy
TEST_DIR=${TEST_DIR:-testdata}
if [ "$OBJECTIVE" = entropy ]; then default_prompts=$TEST_DIR/$TARGET.jsonl; else default_prompts=$TEST_DIR/${TARGET}_valid.jsonl; fi
PROMPTS=${PROMPTS:-$default_prompts}
LIMIT=${LIMIT:-}                          # only the first LIMIT prompts (empty: all)
WEIGHTS_DIR=${WEIGHTS_DIR:-$SAVE_DIR/learned/${TARGET}_${OBJECTIVE}}
GROUPING=${GROUPING:-module}              # one weight vector per module | layer | adapter
TEMPERATURE=${TEMPERATURE:-1}           # T in lambda = softmax(w / T): merge with the same T
FIT_STEPS=${FIT_STEPS:-200}           # gradient steps at most (early stopping may end sooner)
SCORE_NORM=${SCORE_NORM:-calibrated}      # sum | mean | calibrated: the candidate score ranked, as compare.sh's
LR=${LR:-0.05}
FIT_BATCH=${FIT_BATCH:-8}                 # prompts per step (each with all its candidates)
MICRO_BATCH=${MICRO_BATCH:-1}             # prompts per forward/backward pass: peak memory follows this, not FIT_BATCH
HOLDOUT=${HOLDOUT:-0.2}                   # share of the prompts held out for early stopping
SEED=${SEED:-42}
EXTRA_ARGS=${EXTRA_ARGS:-}                # e.g. "--device cuda --dtype bfloat16 --patience 3"

split_list adapters "$ADAPTERS"
split_list extra "$EXTRA_ARGS"
limit=(); if [ -n "$LIMIT" ]; then limit=(--limit "$LIMIT"); fi
echo "[learn_weights] $OBJECTIVE on $PROMPTS: ${#adapters[@]} adapters, grouping $GROUPING -> $WEIGHTS_DIR"
"$PYTHON" -m merge.learn_weights --base-model "$MODEL" --adapters "${adapters[@]}" --objective "$OBJECTIVE" \
  --prompts "$PROMPTS" --out-dir "$WEIGHTS_DIR" --grouping "$GROUPING" --temperature "$TEMPERATURE" \
  --score-norm "$SCORE_NORM" --steps "$FIT_STEPS" --lr "$LR" --batch-size "$FIT_BATCH" --micro-batch-size "$MICRO_BATCH" \
  --holdout "$HOLDOUT" --seed "$SEED" \
  "${limit[@]}" "${extra[@]}"
