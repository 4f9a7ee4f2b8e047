#!/usr/bin/env bash
# Compare WeaveRec with the alternatives on one target, same test users, same decoding: the base model
# without any adapter, target-only, each hybrid alone, naive mixed training, the naive merge (target +
# source-only modules), WeaveRec (target + hybrids, equal weights; a target weight chosen on validation
# users; weights learned by scripts/learn_weights.sh), TIES / DARE / task-arithmetic merges of the WeaveRec
# modules, and the random / popularity / content (word overlap with the history) baselines.
# Trains what is missing (steps 4: train_modules.sh), merges and predicts each merge row through
# merge_and_test.sh (step 5, queued: every row's inference then runs in one process, one engine load),
# and writes $RUN_DIR/<row>/output.jsonl, the report $RUN_DIR/metrics.{json,md,png} (every row with its
# interval, the paired tests of the claim) and $RUN_DIR/training.{json,md} (each module's samples and steps).
# Needs $DATA_DIR and $TEST_DIR for TARGET and SOURCES (make_data.sh, then construct.sh with ALL_MIXED=1).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

TARGET=${TARGET:-sports}
SOURCES=${SOURCES:-"beauty toys"}
MODEL=${MODEL:-models/tiny-qwen2}
CONFIG=${CONFIG:-scripts/train_configs/tiny_cpu_lora.yaml}
SAVE_DIR=${SAVE_DIR:-save}
DATA_DIR=${DATA_DIR:-traindata}
TEST_DIR=${TEST_DIR:-testdata}
TEST_FILE=${TEST_FILE:-$TEST_DIR/$TARGET.jsonl}
VALID_FILE=${VALID_FILE:-$TEST_DIR/${TARGET}_valid.jsonl}
RUN_DIR=${RUN_DIR:-result/compare_$TARGET}
ROWS=${ROWS:-"base target_only hybrids mixed_all naive_merge weaverec weaverec_likelihood ties dare_ties task_arithmetic"}
MODE=${MODE:-score}                       # free | constrained | score (the same for every row)
SCORE_NORM=${SCORE_NORM:-calibrated}      # score mode: sum | mean | calibrated (docs/inference.md)
BATCH_SIZE=${BATCH_SIZE:-auto}             # hf: prompts at once (auto: 32 on CPU, on a GPU what fits its free memory)
GRID=${GRID-"0 1 2 3"}                    # target weights w_0 tried on the validation split (others 1); "" = off
TEMPERATURE=${TEMPERATURE:-1}
VALID_USERS=${VALID_USERS:-300}           # validation lines used by the grid and the learned likelihood weights
DENSITY=${DENSITY:-0.5}                   # TIES
DROP_RATE=${DROP_RATE:-0.5}               # DARE
SCALE=${SCALE:-0.5}                       # task arithmetic: SCALE x the sum of the deltas
BOOTSTRAP=${BOOTSTRAP:-1000}
BACKEND=${BACKEND:-auto}                  # hf | vllm | auto (vllm where .venv-vllm exists, per mode: docs/inference.md)
PARALLEL=${PARALLEL:-1}                   # modules trained at once (train_modules.sh; CPU only)
INFER_ARGS=${INFER_ARGS:-}                # more inference options, e.g. "--data-parallel 2"
SEED=${SEED:-42}                          # DARE's drop masks, the learned weights' split, baselines, bootstrap

split_list sources "$SOURCES"
has_row() { [[ " $ROWS " == *" $1 "* ]]; }
if [ ${#sources[@]} -eq 1 ] && has_row mixed_all; then  # one source: the naive mix is the hybrid itself
  echo "[compare] one source: mixed_all is hybrid_${sources[0]}, not a row of its own"
  ROWS=" $ROWS "; ROWS=${ROWS/ mixed_all / }
fi
hybrids=(); for s in "${sources[@]}"; do hybrids+=("$SAVE_DIR/$(hybrid_name "$TARGET" "$s")"); done
source_only=(); for s in "${sources[@]}"; do source_only+=("$SAVE_DIR/$s"); done
mixed=$(mixed_name "$TARGET" "${sources[@]}")
merged_dir="$SAVE_DIR/merged/compare_$TARGET"

# 1. train what is missing
need_source_only=0; has_row naive_merge && need_source_only=1
need_mixed=0; has_row mixed_all && need_mixed=1
TARGET=$TARGET SOURCES=$SOURCES MODEL=$MODEL CONFIG=$CONFIG SAVE_DIR=$SAVE_DIR DATA_DIR=$DATA_DIR \
  SOURCE_ONLY=$need_source_only MIXED_ALL=$need_mixed PARALLEL=$PARALLEL bash scripts/train_modules.sh

# every row's prediction is queued in one jobs file, then run_jobs runs them all in one inference process
jobs_file="$RUN_DIR/inference.jobs"           # jsonl, one line per row (not *.jsonl: the metric reads those)
mkdir -p "$RUN_DIR"; rm -f "$jobs_file"
infer() {  # infer <row> <test file> <model> [adapter]: a row without a merge
  queue_job "$jobs_file" "$2" "$3" "$RUN_DIR/$1/output.jsonl" "${@:4}"
}
merge_row() {  # merge_row <row> <test file> <output file> VAR=value...: merge_and_test.sh, prediction queued
  local row=$1 test=$2 pred=$3 log; shift 3
  log="$(dirname "$pred")/merge.log"; rm -f "$log"  # its console; shown when it fails
  run_logged "$log" env MODEL="$MODEL" TARGET="$TARGET" SAVE_DIR="$SAVE_DIR" TEMPERATURE="$TEMPERATURE" NAME="$row" \
    MERGED="$merged_dir/$row" PRED="$pred" TEST_FILE="$test" JOBS="$jobs_file" "$@" bash scripts/merge_and_test.sh
  merged_lambdas=$(grep -m1 '^lambdas:' "$log" || true)
  local what="merged"; if grep -q "is up to date" "$log"; then what="merge kept"; fi
  if [ "${QUIET_MERGE:-0}" != 1 ]; then echo "[compare] $row: $what${merged_lambdas:+, $merged_lambdas} (log $log)"; fi
}
run_jobs() {  # every queued row, one process (returns its failure itself: under run_logged set -e is off)
  if [ ! -s "$jobs_file" ]; then return; fi
  echo "[compare] inference of $(wc -l < "$jobs_file") rows in one process (backend $BACKEND, $MODE)"
  split_list infer_extra "$INFER_ARGS"
  "$(infer_python)" -m inference.generate --jobs "$jobs_file" --mode "$MODE" --score-norm "$SCORE_NORM" \
    --batch-size "$BATCH_SIZE" --backend "$BACKEND" --replace-stale "${infer_extra[@]}" || return
  rm -f "$jobs_file"
}
weaverec_modules="$SAVE_DIR/$TARGET ${hybrids[*]}"

# 2. the base model alone, then single modules
if has_row base; then infer base "$TEST_FILE" "$MODEL"; fi
if has_row target_only; then infer target_only "$TEST_FILE" "$MODEL" "$SAVE_DIR/$TARGET"; fi
if has_row hybrids; then
  for i in "${!sources[@]}"; do infer "hybrid_${sources[$i]}" "$TEST_FILE" "$MODEL" "${hybrids[$i]}"; done
fi
if has_row mixed_all; then infer mixed_all "$TEST_FILE" "$MODEL" "$SAVE_DIR/$mixed"; fi

# 3. merges
if has_row naive_merge; then
  merge_row naive_merge "$TEST_FILE" "$RUN_DIR/naive_merge/output.jsonl" ADAPTERS="$SAVE_DIR/$TARGET ${source_only[*]}"
fi
if has_row weaverec; then
  merge_row weaverec "$TEST_FILE" "$RUN_DIR/weaverec/output.jsonl" ADAPTERS="$weaverec_modules"
fi
if has_row weaverec && [ -n "$GRID" ]; then
  # choose the target weight on validation users only, never on test
  valid_dir="$RUN_DIR/validation"
  valid_subset="$valid_dir/data/valid_subset.jsonl"
  mkdir -p "$valid_dir/data"
  head -n "$VALID_USERS" "$VALID_FILE" > "$valid_subset"
  grid_lambdas=()
  for w0 in $GRID; do
    weights="$w0"; for _ in "${sources[@]}"; do weights+=" 1"; done
    QUIET_MERGE=1 merge_row "weaverec_w$w0" "$valid_subset" "$valid_dir/w$w0/output.jsonl" \
      ADAPTERS="$weaverec_modules" WEIGHTS="$weights"
    read -r -a lam <<< "${merged_lambdas#lambdas:}"; grid_lambdas+=("${lam[0]:-?}")
  done
  echo "[compare] validation grid: w_0 in $GRID merged (target lambda ${grid_lambdas[*]}), each predicted for" \
    "$(wc -l < "$valid_subset") validation users (log $valid_dir/inference.log)"
  rm -f "$valid_dir/inference.log"; run_logged "$valid_dir/inference.log" run_jobs
  "$PYTHON" -m metric.metric --test-file "$valid_subset" --pred-dir "$valid_dir" \
    --out-dir "$valid_dir" --no-baselines --bootstrap 0 > /dev/null
  chosen=$("$PYTHON" -c 'import json, sys
report = json.load(open(sys.argv[1]))
print(report["best"], ", ".join("%s %.4f" % (r["name"], r["metrics"]["NDCG@1"]["value"]) for r in report["rows"]))' \
    "$valid_dir/metrics.json")
  read -r best ndcg <<< "$chosen"
  echo "[compare] target weight chosen on $(wc -l < "$valid_subset") validation users: ${best#w} (NDCG@1 $ndcg)"
  infer weaverec_tuned "$TEST_FILE" "$MODEL" "$merged_dir/weaverec_$best"
fi
# learned weights (scripts/learn_weights.sh), opt-in rows: weaverec_likelihood fits per-module w on the first
# VALID_USERS validation lines, weaverec_entropy on the test prompts with their answers never read
for objective in likelihood entropy; do
  if ! has_row "weaverec_$objective"; then continue; fi
  if [ "$objective" = likelihood ]; then prompts=$VALID_FILE; limit=$VALID_USERS; else prompts=$TEST_FILE; limit=""; fi
  learned="$RUN_DIR/learned_$objective"
  MODEL=$MODEL ADAPTERS="$weaverec_modules" OBJECTIVE=$objective PROMPTS=$prompts LIMIT=$limit \
    WEIGHTS_DIR=$learned TEMPERATURE=$TEMPERATURE SCORE_NORM=$SCORE_NORM SEED=$SEED bash scripts/learn_weights.sh
  merge_row "weaverec_$objective" "$TEST_FILE" "$RUN_DIR/weaverec_$objective/output.jsonl" \
    ADAPTERS="$weaverec_modules" WEIGHTS_FILE="$learned/weights.json"
done
# TIES and DARE deltas are not low rank: merged into a full model folder (exact)
if has_row ties; then
  merge_row ties "$TEST_FILE" "$RUN_DIR/ties/output.jsonl" ADAPTERS="$weaverec_modules" METHOD=ties OUTPUT=full \
    MERGE_ARGS="--density $DENSITY"
fi
if has_row dare_ties; then
  merge_row dare_ties "$TEST_FILE" "$RUN_DIR/dare_ties/output.jsonl" ADAPTERS="$weaverec_modules" METHOD=dare_ties \
    OUTPUT=full MERGE_ARGS="--drop-rate $DROP_RATE --seed $SEED"
fi
if has_row task_arithmetic; then
  merge_row task_arithmetic "$TEST_FILE" "$RUN_DIR/task_arithmetic/output.jsonl" ADAPTERS="$weaverec_modules" \
    METHOD=task_arithmetic MERGE_ARGS="--scale $SCALE"
fi
run_jobs

# 4. one report for every row, with the paired comparisons the paper's claim rests on:
#    transfer (hybrids, WeaveRec vs target-only), negative transfer (naive mixing, the naive merge and
#    the hybrids vs target-only; WeaveRec vs the naive merge), learning (target-only vs the base), the bars
#    beyond (WeaveRec vs popularity and content), and learned merge weights against equal weights
items="$DATA_DIR/$TARGET.items.jsonl"
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
pair weaverec_likelihood target_only; pair weaverec_likelihood naive_merge; pair weaverec_tuned naive_merge
"$PYTHON" -m metric.metric --test-file "$TEST_FILE" --pred-dir "$RUN_DIR" --out-dir "$RUN_DIR" \
  "${items_arg[@]}" "${compare[@]}" --bootstrap "$BOOTSTRAP" --seed "$SEED"

# 5. each module's budget: the lines of its file, epochs, samples trained, optimisation steps
modules=("$TARGET")
for s in "${sources[@]}"; do modules+=("$(hybrid_name "$TARGET" "$s")"); done
if [ "$need_source_only" = 1 ]; then modules+=("${sources[@]}"); fi
if [ "$need_mixed" = 1 ]; then modules+=("$mixed"); fi
"$PYTHON" -m metric.training --data-dir "$DATA_DIR" --save-dir "$SAVE_DIR" --datasets "${modules[@]}" \
  --out-dir "$RUN_DIR"
