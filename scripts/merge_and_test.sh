#!/usr/bin/env bash
# Merge the target LoRA with the hybrid LoRAs, then predict the target's test set with the merged model.
# Writes $MERGED/ (a PEFT adapter, or a full model with OUTPUT=full) and $PRED (result/$RUN/output.jsonl).
# Every variable below can be overridden from the environment, e.g.
#   TARGET=sports ADAPTERS="save/sports/checkpoint-1000 save/sports_beauty/checkpoint-4950" \
#   MODEL=models/Qwen2-7B-Instruct bash scripts/merge_and_test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL=${MODEL:-models/tiny-qwen2}
TARGET=${TARGET:-sports}
ADAPTERS=${ADAPTERS:-"save/${TARGET} save/${TARGET}_beauty save/${TARGET}_toys"}  # target first
METHOD=${METHOD:-weaverec}        # weaverec linear task_arithmetic ties dare_linear dare_ties magnitude_prune
WEIGHTS=${WEIGHTS:-}              # one raw weight per adapter, space-separated (empty: all 1)
WEIGHTS_FILE=${WEIGHTS_FILE:-}    # or per-module weights (.json / .safetensors), see merge/merge_lora.py
TEMPERATURE=${TEMPERATURE:-}     # weaverec: T in softmax(w / T) (empty: 1)
OUTPUT=${OUTPUT:-stacked}         # stacked (exact adapter) | svd (rank $RANK adapter) | full (merged model)
RANK=${RANK:-16}                  # svd only
MERGE_EXTRA=${MERGE_EXTRA:-}      # the method's own options, e.g. "--density 0.3 --scale 0.5" for ties
NAME=${NAME:-${TARGET}_${METHOD}_${OUTPUT}}
MERGED=${MERGED:-save/merged/${NAME}}
RUN=${RUN:-${NAME}}
PRED=${PRED:-result/${RUN}/output.jsonl}
TEST_FILE=${TEST_FILE:-testdata/${TARGET}.jsonl}
MODE=${MODE:-constrained}         # free | constrained | score
BATCH_SIZE=${BATCH_SIZE:-32}
INFER_EXTRA=${INFER_EXTRA:-}      # more inference options, e.g. "--limit 100 --data-parallel 2"
BACKEND=${BACKEND:-auto}          # hf | vllm | auto (vllm where .venv-vllm exists, per mode: docs/inference.md)
if [ -x .venv/bin/python ]; then PYTHON=${PYTHON:-.venv/bin/python}; else PYTHON=${PYTHON:-python3}; fi
if [ "$BACKEND" != hf ] && [ -x .venv-vllm/bin/python ]; then INFER_PYTHON=${INFER_PYTHON:-.venv-vllm/bin/python}; fi
INFER_PYTHON=${INFER_PYTHON:-$PYTHON}

# shellcheck disable=SC2206  # word splitting of the space-separated lists is intended
adapters=($ADAPTERS)
merge_args=(--adapters "${adapters[@]}" --out "$MERGED" --method "$METHOD" --output "$OUTPUT" --base-model "$MODEL")
if [ -n "$TEMPERATURE" ]; then merge_args+=(--temperature "$TEMPERATURE"); fi
if [ -n "$WEIGHTS" ]; then merge_args+=(--weights $WEIGHTS); fi
if [ -n "$WEIGHTS_FILE" ]; then merge_args+=(--weights-file "$WEIGHTS_FILE"); fi
if [ "$OUTPUT" = "svd" ]; then merge_args+=(--rank "$RANK"); fi
echo "[merge_and_test] merging ${#adapters[@]} adapters with $METHOD ($OUTPUT) into $MERGED"
# shellcheck disable=SC2086
"$PYTHON" -m merge.merge_lora "${merge_args[@]}" $MERGE_EXTRA

if [ "$OUTPUT" = "full" ]; then model_args=(--base-model "$MERGED"); else model_args=(--base-model "$MODEL" --adapter "$MERGED"); fi
echo "[merge_and_test] predicting $TEST_FILE -> $PRED ($MODE)"
# shellcheck disable=SC2086
"$INFER_PYTHON" -m inference.generate --test-file "$TEST_FILE" "${model_args[@]}" \
  --out "$PRED" --mode "$MODE" --batch-size "$BATCH_SIZE" --backend "$BACKEND" $INFER_EXTRA
echo "[merge_and_test] next: TARGET=$TARGET PREDICTIONS=$PRED bash scripts/metric.sh"
