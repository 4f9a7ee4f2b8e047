#!/usr/bin/env bash
# Step 4 of 6. Train every LoRA module WeaveRec merges: the target-only module and one hybrid module per source,
# i.e. $SAVE_DIR/<T> and $SAVE_DIR/<T>_<S> (datasets made by data_process.process and data_process.construct).
# For comparisons: SOURCE_ONLY=1 also trains <S> alone per source; MIXED_ALL=1 also trains the naive
# all-domain mix <T>_<S1>_<S2>... (construct --all-mixed). scripts/train_lora.sh decides per module: a finished
# module trained from the same inputs is skipped, an interrupted one resumed, a changed one retrained
# (SKIP_EXISTING=0 retrains all). Every train_lora.sh variable (NPROC, PRECISION, TRAIN_ARGS, DRY_RUN...) passes through.
# PARALLEL=N trains N modules at once (CPU, one process each: the tiny model leaves cores idle between
# steps), each module's console in $SAVE_DIR/<module>.console.log; the adapters are the same bytes.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

TARGET=${TARGET:-sports}
SOURCES=${SOURCES:-"beauty toys"}
MODEL=${MODEL:-models/tiny-qwen2}
CONFIG=${CONFIG:-scripts/train_configs/tiny_cpu_lora.yaml}
DATA_DIR=${DATA_DIR:-traindata}
SAVE_DIR=${SAVE_DIR:-save}
SKIP_EXISTING=${SKIP_EXISTING:-1}
SOURCE_ONLY=${SOURCE_ONLY:-0}
MIXED_ALL=${MIXED_ALL:-0}
PARALLEL=${PARALLEL:-1}                 # modules trained at once (1 on GPUs: a module takes them all)
export MODEL CONFIG DATA_DIR SAVE_DIR SKIP_EXISTING

split_list sources "$SOURCES"
datasets=("$TARGET")
for s in "${sources[@]}"; do datasets+=("$(hybrid_name "$TARGET" "$s")"); done
if [ "$SOURCE_ONLY" = "1" ]; then datasets+=("${sources[@]}"); fi
if [ "$MIXED_ALL" = "1" ]; then datasets+=("$(mixed_name "$TARGET" "${sources[@]}")"); fi
step 4 "LoRA modules ${datasets[*]} -> $SAVE_DIR"

if ! [[ "$PARALLEL" =~ ^[1-9][0-9]*$ ]]; then echo "error: PARALLEL=$PARALLEL: a number of modules, 1 or more" >&2; exit 2; fi
if [ "$PARALLEL" -gt 1 ] && { [ "${NPROC:-1}" != 1 ] || [ "${NNODES:-1}" != 1 ]; }; then
  echo "error: PARALLEL=$PARALLEL with NPROC=${NPROC:-1} NNODES=${NNODES:-1}: train modules one at a time on several devices" >&2
  exit 2
fi
if [ "${DRY_RUN:-0}" = 1 ]; then PARALLEL=1; fi
if [ "$PARALLEL" -gt 1 ]; then
  # idle OpenMP threads sleep instead of spinning: with spinning, 3 modules of 2 threads each on 2 cores
  # took 585 s against 256 s one after another; sleeping, 205 s (the same adapter bytes; docs/training.md)
  export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
summary=()
outcome() {  # outcome <dataset> <console file> <seconds>: the summary entry of a finished train_lora.sh
  local last
  last=$(grep '^\[train_lora\]' "$2" | tail -n 1 || true)
  if [[ "$last" == *"wrote "* ]]; then summary+=("$1: trained in ${3}s")
  elif [[ "$last" == *"skipped"* ]]; then summary+=("$1: skipped")
  else summary+=("$1: dry run"); fi
}
if [ "$PARALLEL" = 1 ]; then
  for ds in "${datasets[@]}"; do
    start=$SECONDS
    bash scripts/train_lora.sh "$ds" | tee "$work/$ds"
    outcome "$ds" "$work/$ds" $((SECONDS - start))
  done
else
  mkdir -p "$SAVE_DIR"
  echo "[train_modules] $PARALLEL modules at once; each one's console in $SAVE_DIR/<module>.console.log"
  declare -A pid_of=() started=()
  failed=()
  finish() {  # wait for one module, report it
    local pid ds status=0
    wait -n -p pid "${!pid_of[@]}" || status=$?
    ds=${pid_of[$pid]}; unset "pid_of[$pid]"
    if [ "$status" -ne 0 ]; then
      failed+=("$ds"); echo "[train_modules] $ds failed (exit $status); the end of $SAVE_DIR/$ds.console.log:" >&2
      tail -n 20 "$SAVE_DIR/$ds.console.log" >&2
      return
    fi
    outcome "$ds" "$SAVE_DIR/$ds.console.log" $((SECONDS - started[$ds]))
    echo "[train_modules] ${summary[-1]}"
  }
  for ds in "${datasets[@]}"; do
    while [ "${#pid_of[@]}" -ge "$PARALLEL" ]; do finish; done
    started[$ds]=$SECONDS
    bash scripts/train_lora.sh "$ds" > "$SAVE_DIR/$ds.console.log" 2>&1 &
    pid_of[$!]=$ds
  done
  while [ "${#pid_of[@]}" -gt 0 ]; do finish; done
  if [ "${#failed[@]}" -gt 0 ]; then
    echo "error: training failed for ${failed[*]} (their consoles above)" >&2
    exit 1
  fi
fi
joined=$(printf '%s; ' "${summary[@]}")
echo "[train_modules] target $TARGET, sources ${sources[*]}: ${joined%; }"
