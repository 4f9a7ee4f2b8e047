#!/usr/bin/env bash
# Train every LoRA module WeaveRec merges: the target-only module and one hybrid module per source,
# i.e. $SAVE_DIR/<T> and $SAVE_DIR/<T>_<S> (datasets made by data_process.process and data_process.construct).
# For comparisons: SOURCE_ONLY=1 also trains <S> alone per source; MIXED_ALL=1 also trains the naive
# all-domain mix <T>_<S1>_<S2>... (construct --all-mixed). A module whose adapter exists is skipped
# (SKIP_EXISTING=0 retrains). Every train_lora.sh variable (NPROC, DEEPSPEED, EXTRA, DRY_RUN...) passes through.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=${TARGET:-sports}
SOURCES=${SOURCES:-"beauty toys"}
MODEL=${MODEL:-models/tiny-qwen2}
CONFIG=${CONFIG:-scripts/train_configs/tiny_cpu_lora.yaml}
DATA_DIR=${DATA_DIR:-traindata}
SAVE_DIR=${SAVE_DIR:-save}
SKIP_EXISTING=${SKIP_EXISTING:-1}
SOURCE_ONLY=${SOURCE_ONLY:-0}
MIXED_ALL=${MIXED_ALL:-0}
export MODEL CONFIG DATA_DIR SAVE_DIR

read -r -a sources <<< "$SOURCES"
datasets=("$TARGET")
for s in "${sources[@]}"; do datasets+=("${TARGET}_$s"); done
if [ "$SOURCE_ONLY" = "1" ]; then datasets+=("${sources[@]}"); fi
if [ "$MIXED_ALL" = "1" ]; then
  mixed=$TARGET
  for s in "${sources[@]}"; do mixed+="_$s"; done
  datasets+=("$mixed")
fi

summary=()
for ds in "${datasets[@]}"; do
  if [ "$SKIP_EXISTING" = "1" ] && [ -f "$SAVE_DIR/$ds/adapter_model.safetensors" ]; then
    echo "[train_modules] $ds: $SAVE_DIR/$ds already trained, skipped (SKIP_EXISTING=0 retrains)"
    summary+=("$ds: skipped")
    continue
  fi
  start=$SECONDS
  bash scripts/train_lora.sh "$ds"
  summary+=("$ds: $((SECONDS - start))s")
done
echo "[train_modules] target $TARGET, sources ${sources[*]}:"
printf '  %s\n' "${summary[@]}"
