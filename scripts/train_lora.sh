#!/usr/bin/env bash
# Train one LoRA module with LLaMA-Factory on a registered dataset: bash scripts/train_lora.sh <dataset>
#   <dataset>: a name in $DATA_DIR/dataset_info.json, e.g. sports, sports_beauty, beauty, sports_beauty_toys.
# Writes $SAVE_DIR/<dataset>/ (adapter_config.json + adapter_model.safetensors, checkpoint-N/,
# trainer_log.jsonl, training_loss.png). The folder is emptied first and LLaMA-Factory writes the top-level
# adapter only when training ends, so a folder with an adapter at its top is always a finished run.
# Multi-GPU: NPROC=8 (LLaMA-Factory's own torchrun launch, FORCE_TORCHRUN=1), optionally
# DEEPSPEED=scripts/train_configs/ds_z2_config.json; several nodes: also NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT.
# DRY_RUN=1 prints the environment and the command instead of running them.
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL=${MODEL:-models/tiny-qwen2}
CONFIG=${CONFIG:-scripts/train_configs/tiny_cpu_lora.yaml}
DATA_DIR=${DATA_DIR:-traindata}
SAVE_DIR=${SAVE_DIR:-save}
NPROC=${NPROC:-1}
DEEPSPEED=${DEEPSPEED:-}
EXTRA=${EXTRA:-}                # more key=value overrides for llamafactory-cli, space-separated
DRY_RUN=${DRY_RUN:-0}
if [ -x .venv/bin/python ]; then PYTHON=${PYTHON:-.venv/bin/python}; else PYTHON=${PYTHON:-python3}; fi
LLAMAFACTORY_CLI=${LLAMAFACTORY_CLI:-$(dirname "$PYTHON")/llamafactory-cli}

if [ $# -ne 1 ]; then
  echo "usage: bash scripts/train_lora.sh <dataset>   (env: MODEL CONFIG DATA_DIR SAVE_DIR NPROC DEEPSPEED EXTRA DRY_RUN)" >&2
  exit 2
fi
DATASET=$1

# one clear line for a wrong name or path, before LLaMA-Factory starts
"$PYTHON" -m models.check_train_inputs --dataset "$DATASET" --data-dir "$DATA_DIR" --model "$MODEL" \
  --config "$CONFIG" --deepspeed "$DEEPSPEED" --nproc "$NPROC"
if [ ! -x "$LLAMAFACTORY_CLI" ]; then
  LLAMAFACTORY_CLI=$(command -v llamafactory-cli || true)
  if [ -z "$LLAMAFACTORY_CLI" ]; then
    echo "error: llamafactory-cli not found (pip install -r requirements.txt)" >&2
    exit 2
  fi
fi

OUT="$SAVE_DIR/$DATASET"
cmd=("$LLAMAFACTORY_CLI" train "$CONFIG" "model_name_or_path=$MODEL" "dataset=$DATASET"
     "dataset_dir=$DATA_DIR" "output_dir=$OUT")
if [ -n "$DEEPSPEED" ]; then cmd+=("deepspeed=$DEEPSPEED"); fi
# shellcheck disable=SC2206  # EXTRA is a list of key=value words on purpose
if [ -n "$EXTRA" ]; then cmd+=($EXTRA); fi

# several processes: LLaMA-Factory launches torchrun itself
if [ "$NPROC" -gt 1 ]; then
  export FORCE_TORCHRUN=1 NPROC_PER_NODE="$NPROC"
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
  printf '%q ' "${cmd[@]}"
  echo
  exit 0
fi

if [ "$own_cache" = "1" ]; then trap 'rm -rf "$HF_DATASETS_CACHE"' EXIT; fi
# an old adapter left at the top would make an interrupted run look finished
rm -rf "$OUT"
mkdir -p "$SAVE_DIR"
echo "[train_lora] $DATASET: $MODEL + $CONFIG -> $OUT"
start=$SECONDS
"${cmd[@]}"
if [ ! -f "$OUT/adapter_model.safetensors" ]; then
  echo "error: LLaMA-Factory finished without writing $OUT/adapter_model.safetensors" >&2
  exit 1
fi
echo "[train_lora] wrote $OUT in $((SECONDS - start))s (loss plot: $OUT/training_loss.png)"
