#!/usr/bin/env bash
# Step 4 of 6, one module (scripts/train_modules.sh trains them all). Train one LoRA module with LLaMA-Factory on a registered dataset: bash scripts/train_lora.sh <dataset>
#   <dataset>: any name in $DATA_DIR/dataset_info.json, e.g. sports, sports_beauty, sports_beauty_toys.
# Trains in $SAVE_DIR/<dataset>.partial/ and renames it to $SAVE_DIR/<dataset>/ when done, with the chosen
# adapter at its top (the best evaluated checkpoint when the config evaluates, else the last step), so a
# folder with an adapter at its top is always a finished run. LLaMA-Factory's output goes to train.log there.
# Run again, it skips a finished module trained from the same data, config, model and overrides, resumes an
# interrupted one from its last checkpoint, and trains afresh when any of them changed (SKIP_EXISTING=0: always).
# Several GPUs: NPROC=8 (LLaMA-Factory's own torchrun launch); several nodes: NNODES NODE_RANK MASTER_ADDR
# MASTER_PORT too, on a shared file system. DRY_RUN=1 checks and prints the plan and the command, changing nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

MODEL=${MODEL:-models/tiny-qwen2}
CONFIG=${CONFIG:-scripts/train_configs/tiny_cpu_lora.yaml}
DATA_DIR=${DATA_DIR:-traindata}
SAVE_DIR=${SAVE_DIR:-save}
NPROC=${NPROC:-1}               # processes (GPUs) per node
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PRECISION=${PRECISION:-auto}    # auto: the config's, or the best the hardware has (bf16 > fp16 > fp32) | bf16 | fp16 | fp32
TEMPLATE=${TEMPLATE:-}          # LLaMA-Factory template; empty: the model's own (qwen, llama3 or mistral; models/families.py)
MAX_CUT=${MAX_CUT:-0.001}       # share of samples longer than cutoff_len tolerated (they lose their end)
SKIP_EXISTING=${SKIP_EXISTING:-1}
TRAIN_ARGS=${TRAIN_ARGS:-}      # more key=value overrides for llamafactory-cli, space-separated
DRY_RUN=${DRY_RUN:-0}
LOG_TAIL=${LOG_TAIL:-30}        # lines of train.log shown when training fails

if [ $# -ne 1 ]; then
  echo "usage: bash scripts/train_lora.sh <dataset>   (env: MODEL CONFIG DATA_DIR SAVE_DIR NPROC NNODES NODE_RANK" \
       "MASTER_ADDR MASTER_PORT PRECISION TEMPLATE MAX_CUT SKIP_EXISTING TRAIN_ARGS DRY_RUN)" >&2
  exit 2
fi
DATASET=$1
OUT="$SAVE_DIR/$DATASET"
if [ -n "${DEEPSPEED:-}" ]; then
  echo "error: DEEPSPEED is not supported (deepspeed 0.16.9 fails with torch 2.13; see docs/gpu.md)" >&2
  exit 2
fi
# LLaMA-Factory starts torchrun by name: the environment's bin/ must come first on PATH
case "$PYTHON" in */*) BIN_DIR=$(cd "$(dirname "$PYTHON")" && pwd) ;; *) BIN_DIR=$(dirname "$(command -v "$PYTHON")") ;; esac
export PATH="$BIN_DIR:$PATH"

# checks (one clear line for each problem), precision, template (its prompts equal to the chat template's, which
# inference uses), prompt lengths, and the plan: skip, resume or fresh
# (only node 0 sets up the module's folder; the other nodes plan without changing it)
dry=(); if [ "$DRY_RUN" = "1" ] || [ "$NODE_RANK" != "0" ]; then dry=(--dry-run); fi
plan_file=$(mktemp)
"$PYTHON" -m models.check_train_inputs --dataset "$DATASET" --data-dir "$DATA_DIR" --model "$MODEL" \
  --config "$CONFIG" --out "$OUT" --plan-file "$plan_file" --extra "$TRAIN_ARGS" --nproc "$NPROC" --nnodes "$NNODES" \
  --precision "$PRECISION" --template "$TEMPLATE" --max-cut "$MAX_CUT" --skip-existing "$SKIP_EXISTING" "${dry[@]}" || { rm -f "$plan_file"; exit 2; }
mapfile -t plan_lines < "$plan_file"
rm -f "$plan_file"
action=${plan_lines[0]} resume=${plan_lines[1]} overrides=${plan_lines[2]:-}
if [ "$action" = skip ]; then
  if [ "$DRY_RUN" = "1" ]; then echo "# skip"; fi
  exit 0
fi
if [ ! -x "$BIN_DIR/llamafactory-cli" ]; then
  echo "error: llamafactory-cli not found beside $PYTHON (pip install -r requirements.txt)" >&2
  exit 2
fi

PARTIAL="$OUT.partial"
# shellcheck disable=SC2206  # overrides and TRAIN_ARGS are lists of key=value words on purpose
cmd=("$BIN_DIR/llamafactory-cli" train "$CONFIG" "model_name_or_path=$MODEL" "dataset=$DATASET"
     "dataset_dir=$DATA_DIR" "output_dir=$PARTIAL" $overrides $TRAIN_ARGS)
if [ "$resume" != "-" ]; then cmd+=("resume_from_checkpoint=$resume" "overwrite_output_dir=false"); fi

# several processes: LLaMA-Factory launches torchrun itself (NNODES NODE_RANK MASTER_ADDR MASTER_PORT pass through)
if [ "$NPROC" -gt 1 ] || [ "$NNODES" -gt 1 ]; then
  export FORCE_TORCHRUN=1 NPROC_PER_NODE="$NPROC" NNODES NODE_RANK
fi
# a fresh datasets cache per run (a stale shared one breaks loading) unless the caller chose one
own_cache=0
if [ -z "${HF_DATASETS_CACHE:-}" ]; then
  HF_DATASETS_CACHE="${TMPDIR:-/tmp}/weaverec-hf-cache.$DATASET.$$"
  own_cache=1
fi
export HF_DATASETS_CACHE

if [ "$DRY_RUN" = "1" ]; then
  for var in FORCE_TORCHRUN NPROC_PER_NODE NNODES NODE_RANK MASTER_ADDR MASTER_PORT HF_DATASETS_CACHE; do
    if [ -n "${!var:-}" ]; then echo "$var=${!var}"; fi
  done
  echo "# $action"
  printf '%q ' "${cmd[@]}"
  echo
  exit 0
fi

watcher=""
cleanup() {
  if [ -n "$watcher" ]; then kill "$watcher" 2>/dev/null || true; fi
  if [ "$own_cache" = "1" ]; then rm -rf "$HF_DATASETS_CACHE"; fi
}
trap cleanup EXIT
log="$PARTIAL/train.log"
mkdir -p "$PARTIAL"
echo "=== $(date '+%F %T') ${cmd[*]}" >> "$log"
"$PYTHON" -m models.train_progress --log "$PARTIAL/trainer_log.jsonl" --name "$DATASET" --parent $$ &
watcher=$!
start=$SECONDS
status=0
"${cmd[@]}" >> "$log" 2>&1 || status=$?
kill "$watcher" 2>/dev/null || true
wait "$watcher" 2>/dev/null || true
watcher=""
if [ "$status" -ne 0 ]; then
  echo "error: LLaMA-Factory failed on $DATASET (exit $status); the last lines of $log:" >&2
  tail -n "$LOG_TAIL" "$log" >&2
  exit 1
fi
if [ "$NODE_RANK" != "0" ]; then
  echo "[train_lora] $DATASET: node $NODE_RANK done (node 0 writes $OUT)"
  exit 0
fi
"$PYTHON" -m models.train_finish --out "$OUT" --config "$CONFIG" --extra "$overrides $TRAIN_ARGS" --seconds $((SECONDS - start))
