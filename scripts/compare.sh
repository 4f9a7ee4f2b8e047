#!/usr/bin/env bash
# Compare WeaveRec with the alternatives on one target, same test users, same decoding:
#   the base model without any adapter, target-only, each hybrid alone, naive mixed training, the naive merge (target + source-only modules),
#   WeaveRec (target + hybrids, equal weights; optionally a target weight chosen on the validation split),
#   TIES / DARE / task-arithmetic merges of the WeaveRec modules, and the random / popularity / content
#   (word overlap with the history) baselines.
# Trains only the modules that are missing (train_modules.sh skips existing ones), then writes
# $RUN_DIR/<row>/output.jsonl, the report $RUN_DIR/metrics.{json,md,png} (every row with its interval,
# the paired tests of the claim) and $RUN_DIR/training.{json,md} (each module's samples and steps).
# Needs traindata/ and testdata/ for TARGET and SOURCES (make_data.sh, then construct.sh with ALL_MIXED=1).
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=${TARGET:-sports}
SOURCES=${SOURCES:-"beauty toys"}
MODEL=${MODEL:-models/tiny-qwen2}
CONFIG=${CONFIG:-scripts/train_configs/tiny_cpu_lora.yaml}
SAVE_DIR=${SAVE_DIR:-save}
DATA_DIR=${DATA_DIR:-traindata}           # LLaMA-Factory dataset_dir (and <target>.items.jsonl)
TEST_DIR=${TEST_DIR:-testdata}
TEST_FILE=${TEST_FILE:-${TEST_DIR}/${TARGET}.jsonl}
VALID_FILE=${VALID_FILE:-${TEST_DIR}/${TARGET}_valid.jsonl}
RUN_DIR=${RUN_DIR:-result/compare_${TARGET}}
ROWS=${ROWS:-"base target_only hybrids mixed_all naive_merge weaverec ties dare_ties task_arithmetic"}
MODE=${MODE:-score}                       # free | constrained | score (the same for every row)
SCORE_NORM=${SCORE_NORM:-calibrated}      # score mode: sum | mean | calibrated (inference/scoring.py)
BATCH_SIZE=${BATCH_SIZE:-32}
GRID=${GRID-"0 1 2 3"}                    # target weights w_0 tried on the validation split (others 1); "" = off
TEMPERATURE=${TEMPERATURE:-1.0}
VALID_USERS=${VALID_USERS:-300}           # validation lines used for the grid
DENSITY=${DENSITY:-0.5}                   # TIES / DARE
DROP_RATE=${DROP_RATE:-0.5}               # DARE
SCALE=${SCALE:-0.5}                       # task arithmetic: SCALE x the sum of the deltas
BOOTSTRAP=${BOOTSTRAP:-1000}
BACKEND=${BACKEND:-auto}                  # hf | vllm | auto (vllm where .venv-vllm exists, per mode: docs/inference.md)
INFER_EXTRA=${INFER_EXTRA:-}              # more inference options, e.g. "--data-parallel 2"
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
if [ "$BACKEND" != hf ] && [ -x .venv-vllm/bin/python ]; then INFER_PYTHON=${INFER_PYTHON:-.venv-vllm/bin/python}; fi
INFER_PYTHON=${INFER_PYTHON:-$PYTHON}

read -r -a sources <<< "$SOURCES"
has_row() { [[ " $ROWS " == *" $1 "* ]]; }
hybrids=(); for s in "${sources[@]}"; do hybrids+=("$SAVE_DIR/${TARGET}_$s"); done
source_only=(); for s in "${sources[@]}"; do source_only+=("$SAVE_DIR/$s"); done
mixed="$TARGET"; for s in "${sources[@]}"; do mixed+="_$s"; done
merged_dir="$SAVE_DIR/merged/compare_${TARGET}"

# 1. train what is missing
need_source_only=0; has_row naive_merge && need_source_only=1
need_mixed=0; has_row mixed_all && need_mixed=1
TARGET=$TARGET SOURCES=$SOURCES MODEL=$MODEL CONFIG=$CONFIG SAVE_DIR=$SAVE_DIR DATA_DIR=$DATA_DIR \
  SOURCE_ONLY=$need_source_only MIXED_ALL=$need_mixed bash scripts/train_modules.sh

# rows are queued, then run_jobs runs them in one inference process: one engine load for all of them
jobs_file="$RUN_DIR/inference.jobs"           # jsonl, one line per row (not *.jsonl: the metric reads those)
mkdir -p "$RUN_DIR"; rm -f "$jobs_file"
infer() {  # infer <row> <test file> <out file> --base-model M [--adapter A]
  local row=$1 test=$2 out=$3; shift 3
  echo "[compare] $row: $MODE decoding on $test (queued)"
  "$PYTHON" -c 'import json, sys
test, out, *args = sys.argv[1:]
opts = dict(zip(args[::2], args[1::2]))
print(json.dumps({"test_file": test, "out": out, "base_model": opts["--base-model"],
                  "adapter": [opts["--adapter"]] if "--adapter" in opts else []}))' "$test" "$out" "$@" >> "$jobs_file"
}
run_jobs() {  # every queued row, one process
  if [ ! -s "$jobs_file" ]; then return; fi
  echo "[compare] inference of $(wc -l < "$jobs_file") rows in one process (backend $BACKEND)"
  # shellcheck disable=SC2086  # INFER_EXTRA is a list of options
  "$INFER_PYTHON" -m inference.generate --jobs "$jobs_file" --mode "$MODE" --score-norm "$SCORE_NORM" \
    --batch-size "$BATCH_SIZE" --backend "$BACKEND" $INFER_EXTRA
  rm -f "$jobs_file"
}
merge() {  # merge <name> <merge args...>; kept when the same arguments merged the same adapter files
  local name=$1; shift
  local out="$merged_dir/$name" stamp="$*" word
  for word in "$@"; do
    if [ -f "$word/adapter_model.safetensors" ]; then stamp+=" $(stat -c %Y "$word/adapter_model.safetensors")"; fi
  done
  if [ -d "$out" ] && [ -f "$out.stamp" ] && [ "$(cat "$out.stamp")" = "$stamp" ]; then
    echo "[compare] $name: $out is up to date, kept"
    return
  fi
  rm -f "$out.stamp"
  "$PYTHON" -m merge.merge_lora --out "$out" "$@"
  printf '%s\n' "$stamp" > "$out.stamp"
}
weaverec_weights() {  # target weight w0, every hybrid 1
  local w=("$1"); for _ in "${sources[@]}"; do w+=(1); done; echo "${w[@]}"
}

# 2. the base model alone, then single modules
if has_row base; then
  infer base "$TEST_FILE" "$RUN_DIR/base/output.jsonl" --base-model "$MODEL"
fi
if has_row target_only; then
  infer target_only "$TEST_FILE" "$RUN_DIR/target_only/output.jsonl" --base-model "$MODEL" --adapter "$SAVE_DIR/$TARGET"
fi
if has_row hybrids; then
  for s in "${sources[@]}"; do
    infer "hybrid_$s" "$TEST_FILE" "$RUN_DIR/hybrid_$s/output.jsonl" --base-model "$MODEL" --adapter "$SAVE_DIR/${TARGET}_$s"
  done
fi
if has_row mixed_all; then
  infer mixed_all "$TEST_FILE" "$RUN_DIR/mixed_all/output.jsonl" --base-model "$MODEL" --adapter "$SAVE_DIR/$mixed"
fi

# 3. merges
if has_row naive_merge; then
  merge naive_merge --adapters "$SAVE_DIR/$TARGET" "${source_only[@]}" --method weaverec
  infer naive_merge "$TEST_FILE" "$RUN_DIR/naive_merge/output.jsonl" --base-model "$MODEL" --adapter "$merged_dir/naive_merge"
fi
if has_row weaverec; then
  merge weaverec --adapters "$SAVE_DIR/$TARGET" "${hybrids[@]}" --method weaverec
  infer weaverec "$TEST_FILE" "$RUN_DIR/weaverec/output.jsonl" --base-model "$MODEL" --adapter "$merged_dir/weaverec"
fi
if has_row weaverec && [ -n "$GRID" ]; then
  # choose the target weight on validation users only, never on test
  valid_dir="$RUN_DIR/validation"
  valid_subset="$valid_dir/data/valid_subset.jsonl"
  mkdir -p "$valid_dir/data"
  head -n "$VALID_USERS" "$VALID_FILE" > "$valid_subset"
  for w0 in $GRID; do
    read -r -a weights <<< "$(weaverec_weights "$w0")"
    merge "weaverec_w$w0" --adapters "$SAVE_DIR/$TARGET" "${hybrids[@]}" --method weaverec \
      --weights "${weights[@]}" --temperature "$TEMPERATURE"
    infer "weaverec_w$w0 (validation)" "$valid_subset" "$valid_dir/w$w0/output.jsonl" \
      --base-model "$MODEL" --adapter "$merged_dir/weaverec_w$w0"
  done
  run_jobs
  "$PYTHON" -m metric.metric --test-file "$valid_subset" --pred-dir "$valid_dir" \
    --out-dir "$valid_dir" --no-baselines --bootstrap 0 > /dev/null
  best=$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["best"])' "$valid_dir/metrics.json")
  echo "[compare] target weight chosen on $VALID_USERS validation users: ${best#w}"
  infer weaverec_tuned "$TEST_FILE" "$RUN_DIR/weaverec_tuned/output.jsonl" --base-model "$MODEL" \
    --adapter "$merged_dir/weaverec_$best"
fi
# learned weights (scripts/learn_weights.sh), opt-in rows: weaverec_likelihood fits per-module w on the first
# VALID_USERS validation lines, weaverec_entropy on the test prompts with their answers never read
for objective in likelihood entropy; do
  if ! has_row "weaverec_$objective"; then continue; fi
  if [ "$objective" = likelihood ]; then prompts=$VALID_FILE; limit=$VALID_USERS; else prompts=$TEST_FILE; limit=""; fi
  learned="$RUN_DIR/learned_$objective"
  MODEL=$MODEL ADAPTERS="$SAVE_DIR/$TARGET ${hybrids[*]}" OBJECTIVE=$objective PROMPTS=$prompts LIMIT=$limit \
    OUT_DIR=$learned TEMPERATURE=$TEMPERATURE PYTHON=$PYTHON bash scripts/learn_weights.sh
  rm -f "$merged_dir/weaverec_$objective.stamp"  # the weights file may have changed: merge again
  merge "weaverec_$objective" --adapters "$SAVE_DIR/$TARGET" "${hybrids[@]}" --method weaverec \
    --weights-file "$learned/weights.json" --temperature "$TEMPERATURE"
  infer "weaverec_$objective" "$TEST_FILE" "$RUN_DIR/weaverec_$objective/output.jsonl" --base-model "$MODEL" \
    --adapter "$merged_dir/weaverec_$objective"
done
# TIES and DARE deltas are not low rank: merged into a full model folder (exact)
for method in ties dare_ties task_arithmetic; do
  if ! has_row "$method"; then continue; fi
  case $method in
    ties) extra=(--density "$DENSITY" --output full --base-model "$MODEL") ;;
    dare_ties) extra=(--drop-rate "$DROP_RATE" --output full --base-model "$MODEL") ;;
    task_arithmetic) extra=(--scale "$SCALE") ;;
  esac
  merge "$method" --adapters "$SAVE_DIR/$TARGET" "${hybrids[@]}" --method "$method" "${extra[@]}"
  if [ "$method" = task_arithmetic ]; then
    infer "$method" "$TEST_FILE" "$RUN_DIR/$method/output.jsonl" --base-model "$MODEL" --adapter "$merged_dir/$method"
  else
    infer "$method" "$TEST_FILE" "$RUN_DIR/$method/output.jsonl" --base-model "$merged_dir/$method"
  fi
done

run_jobs

# 4. one report for every row, with the paired comparisons the paper's claim rests on:
#    transfer (hybrids, WeaveRec vs target-only), negative transfer (naive mixing, the naive merge and
#    the hybrids vs target-only; WeaveRec vs the naive merge), learning (target-only vs the base), the bars
#    beyond (WeaveRec vs popularity and content), and learned merge weights against equal weights
items="$DATA_DIR/${TARGET}.items.jsonl"
items_arg=(); if [ -f "$items" ]; then items_arg=(--items "$items"); fi
rows_done=(); for d in "$RUN_DIR"/*/; do [ -f "$d/output.jsonl" ] && rows_done+=("$(basename "$d")"); done
has_out() { [[ " ${rows_done[*]} " == *" $1 "* ]]; }
compare=()
pair() { if has_out "$1" && { has_out "$2" || [ "$2" = content ] || { [ "$2" = popularity ] && [ -f "$items" ]; }; }; then
  compare+=(--compare "$1" "$2"); fi; }
pair weaverec target_only; pair weaverec naive_merge; pair weaverec_tuned target_only
for s in "${sources[@]}"; do pair "hybrid_$s" target_only; done
pair mixed_all target_only; pair naive_merge target_only; pair target_only base
pair weaverec popularity; pair weaverec content
pair weaverec_likelihood weaverec; pair weaverec_entropy weaverec
"$PYTHON" -m metric.metric --test-file "$TEST_FILE" --pred-dir "$RUN_DIR" --out-dir "$RUN_DIR" \
  "${items_arg[@]}" "${compare[@]}" --bootstrap "$BOOTSTRAP"

# 5. each module's budget: the lines of its file, epochs, samples trained, optimisation steps
modules=("$TARGET")
for s in "${sources[@]}"; do modules+=("${TARGET}_$s"); done
if [ "$need_source_only" = 1 ]; then modules+=("${sources[@]}"); fi
if [ "$need_mixed" = 1 ]; then modules+=("$mixed"); fi
"$PYTHON" -m metric.training --data-dir "$DATA_DIR" --save-dir "$SAVE_DIR" --datasets "${modules[@]}" \
  --out-dir "$RUN_DIR"
