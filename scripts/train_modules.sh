#!/usr/bin/env bash
# Step 4 of 6. Train every LoRA module WeaveRec merges: the target-only module and one hybrid module per source,
# i.e. $SAVE_DIR/<T> and $SAVE_DIR/<T>_<S> (datasets made by data_process.process and data_process.construct).
# For comparisons: SOURCE_ONLY=1 also trains <S> alone per source; MIXED_ALL=1 also trains the naive
# all-domain mix <T>_<S1>_<S2>... (construct --all-mixed). scripts/train_lora.sh decides per module: a finished
# module trained from the same inputs is skipped, an interrupted one resumed, a changed one retrained
# (SKIP_EXISTING=0 retrains all). Every train_lora.sh variable (NPROC, PRECISION, TRAIN_ARGS, DRY_RUN...) passes through.
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
export MODEL CONFIG DATA_DIR SAVE_DIR SKIP_EXISTING

split_list sources "$SOURCES"
datasets=("$TARGET")
for s in "${sources[@]}"; do datasets+=("$(hybrid_name "$TARGET" "$s")"); done
if [ "$SOURCE_ONLY" = "1" ]; then datasets+=("${sources[@]}"); fi
if [ "$MIXED_ALL" = "1" ]; then datasets+=("$(mixed_name "$TARGET" "${sources[@]}")"); fi
step 4 "LoRA modules ${datasets[*]} -> $SAVE_DIR"

said=$(mktemp)
trap 'rm -f "$said"' EXIT
summary=()
for ds in "${datasets[@]}"; do
  start=$SECONDS
  bash scripts/train_lora.sh "$ds" | tee "$said"
  last=$(grep '^\[train_lora\]' "$said" | tail -n 1 || true)
  if [[ "$last" == *"wrote "* ]]; then summary+=("$ds: trained in $((SECONDS - start))s")
  elif [[ "$last" == *"skipped"* ]]; then summary+=("$ds: skipped")
  else summary+=("$ds: dry run"); fi
done
joined=$(printf '%s; ' "${summary[@]}")
echo "[train_modules] target $TARGET, sources ${sources[*]}: ${joined%; }"
