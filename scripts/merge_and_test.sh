#!/usr/bin/env bash
# Step 5 of 6. Merge the target LoRA with the hybrid LoRAs, then predict the target's test file with the merged
# model. Writes $MERGED/ (a PEFT adapter, or a full model with OUTPUT=full) and $PRED (one line per test line).
# With the provided checkpoints, e.g.:
#   TARGET=sports ADAPTERS="save/sports/checkpoint-1000 save/sports_beauty/checkpoint-4950" \
#   MODEL=models/Qwen2-7B-Instruct MODE=free bash scripts/merge_and_test.sh
# A merge made from the same arguments and adapter files is kept, not made again. JOBS=FILE queues the
# prediction as a line of an inference.generate --jobs file instead of running it (scripts/compare.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

MODEL=${MODEL:-models/tiny-qwen2}
TARGET=${TARGET:-sports}
SOURCES=${SOURCES:-"beauty toys"}
SAVE_DIR=${SAVE_DIR:-save}
TEST_DIR=${TEST_DIR:-testdata}
split_list sources "$SOURCES"
default_adapters="$SAVE_DIR/$TARGET"; for s in "${sources[@]}"; do default_adapters+=" $SAVE_DIR/$(hybrid_name "$TARGET" "$s")"; done
ADAPTERS=${ADAPTERS:-$default_adapters}  # target first
METHOD=${METHOD:-weaverec}        # weaverec linear task_arithmetic ties dare_linear dare_ties magnitude_prune
WEIGHTS=${WEIGHTS:-}              # one raw weight per adapter, space-separated (empty: all 1)
WEIGHTS_FILE=${WEIGHTS_FILE:-}    # or per-module weights (.json / .safetensors), e.g. from learn_weights.sh
TEMPERATURE=${TEMPERATURE:-1}     # weaverec: T in softmax(w / T)
OUTPUT=${OUTPUT:-stacked}         # stacked (exact adapter) | svd (rank $RANK adapter) | full (merged model)
RANK=${RANK:-16}                  # svd only
MERGE_ARGS=${MERGE_ARGS:-}        # the method's own options, e.g. "--density 0.3 --scale 0.5" for ties
NAME=${NAME:-${TARGET}_${METHOD}_${OUTPUT}}
MERGED=${MERGED:-$SAVE_DIR/merged/$NAME}
PRED=${PRED:-result/$NAME/output.jsonl}
TEST_FILE=${TEST_FILE:-$TEST_DIR/$TARGET.jsonl}
MODE=${MODE:-score}               # free | constrained | score
SCORE_NORM=${SCORE_NORM:-calibrated}  # score mode: sum | mean | calibrated (docs/inference.md)
BATCH_SIZE=${BATCH_SIZE:-auto}                # hf: prompts at once (auto: 32 on CPU, on a GPU what fits its free memory)
BACKEND=${BACKEND:-auto}          # hf | vllm | auto (vllm where .venv-vllm exists, per mode: docs/inference.md)
INFER_ARGS=${INFER_ARGS:-}        # more inference options, e.g. "--limit 100 --data-parallel 2"
JOBS=${JOBS:-}                    # a jobs file: queue the prediction there instead of running it

split_list adapters "$ADAPTERS"
split_list weights "$WEIGHTS"
split_list merge_extra "$MERGE_ARGS"
merge_args=(--adapters "${adapters[@]}" --method "$METHOD" --output "$OUTPUT" --base-model "$MODEL")
if [ "$METHOD" = weaverec ]; then merge_args+=(--temperature "$TEMPERATURE"); fi
if [ -n "$WEIGHTS" ]; then merge_args+=(--weights "${weights[@]}"); fi
if [ -n "$WEIGHTS_FILE" ]; then merge_args+=(--weights-file "$WEIGHTS_FILE"); fi
if [ "$OUTPUT" = "svd" ]; then merge_args+=(--rank "$RANK"); fi
merge_args+=("${merge_extra[@]}")

# the merge's stamp: its arguments and the content of every file it reads
stamp="${merge_args[*]}"
for f in "${adapters[@]/%//adapter_model.safetensors}" "${adapters[@]/%//adapter_config.json}" $WEIGHTS_FILE; do
  if [ -f "$f" ]; then stamp+=" $(sha256sum "$f" | cut -c1-16)"; fi
done
if [ -d "$MERGED" ] && [ "$(cat "$MERGED.stamp" 2>/dev/null)" = "$stamp" ]; then
  step 5 "$MERGED is up to date (same arguments and adapter files), kept"
else
  step 5 "merging ${#adapters[@]} adapters with $METHOD ($OUTPUT) into $MERGED"
  rm -f "$MERGED.stamp"
  "$PYTHON" -m merge.merge_lora "${merge_args[@]}" --out "$MERGED"
  printf '%s\n' "$stamp" > "$MERGED.stamp"
fi

if [ "$OUTPUT" = "full" ]; then model=("$MERGED"); else model=("$MODEL" "$MERGED"); fi
if [ -n "$JOBS" ]; then
  queue_job "$JOBS" "$TEST_FILE" "${model[0]}" "$PRED" "${model[@]:1}"
  echo "[merge_and_test] $PRED queued in $JOBS"
  exit 0
fi
if [ "$OUTPUT" = "full" ]; then model_args=(--base-model "$MERGED"); else model_args=(--base-model "$MODEL" --adapter "$MERGED"); fi
echo "[merge_and_test] predicting $TEST_FILE -> $PRED ($MODE)"
split_list infer_extra "$INFER_ARGS"
"$(infer_python)" -m inference.generate --test-file "$TEST_FILE" "${model_args[@]}" --out "$PRED" --mode "$MODE" \
  --score-norm "$SCORE_NORM" --batch-size "$BATCH_SIZE" --backend "$BACKEND" --replace-stale "${infer_extra[@]}"
echo "[merge_and_test] next: TARGET=$TARGET PREDICTIONS=$PRED bash scripts/metric.sh"
