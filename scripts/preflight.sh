#!/usr/bin/env bash
# Check this machine before a long job: environments, torch and CUDA, GPUs and bf16, the model folder, free disk
# for the checkpoints and the GPU memory training and inference will need. One line per check; exit 1 when
# something will fail. E.g. before the 7B run on 8 GPUs with vLLM inference (Llama-3.1-8B-Instruct and
# Mistral-7B-Instruct-v0.3 with llama3_8b_lora.yaml and mistral_7b_lora.yaml alike):
#   MODEL=models/Qwen2-7B-Instruct CONFIG=scripts/train_configs/qwen2_7b_lora.yaml NPROC=8 BACKEND=vllm bash scripts/preflight.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

MODEL=${MODEL:-models/tiny-qwen2}
CONFIG=${CONFIG:-scripts/train_configs/tiny_cpu_lora.yaml}
SAVE_DIR=${SAVE_DIR:-save}
MODULES=${MODULES:-3}                # LoRA modules the job trains: 1 + one per source (+ SOURCE_ONLY, MIXED_ALL)
NPROC=${NPROC:-1}
BACKEND=${BACKEND:-auto}             # inference backend: hf (.venv), vllm (.venv-vllm) or auto
BATCH_SIZE=${BATCH_SIZE:-auto}       # inference batch (auto: what fits the GPU; checked for one prompt)
MAX_NEW_TOKENS=${MAX_NEW_TOKENS:-800}
TEMPLATE=${TEMPLATE:-}               # LLaMA-Factory template; empty: the model's own (models/families.py)
VENV=${VENV:-.venv}
VLLM_VENV=${VLLM_VENV:-.venv-vllm}
# any Python 3 runs the checks (they ask each environment's own Python what it has): lib.sh's choice

"$PYTHON" -m models.preflight --model "$MODEL" --config "$CONFIG" --save-dir "$SAVE_DIR" --modules "$MODULES" \
  --nproc "$NPROC" --backend "$BACKEND" --batch-size "$BATCH_SIZE" --max-new-tokens "$MAX_NEW_TOKENS" \
  --template "$TEMPLATE" --venv "$VENV" --vllm-venv "$VLLM_VENV"
