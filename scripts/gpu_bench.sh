#!/usr/bin/env bash
# The Qwen2-7B benchmark on the lent GPU machine, one device call: installs the carried wheels (.gpu/, filled by
# scripts/gpu_bench_prepare.sh), sets up the training Python LLaMA-Factory runs from, then runs
# benchmarks/bench_7b.py stage by stage into $OUT (bench_7b.md, bench_7b.json, logs/, profile tables).
#   run: command "bash scripts/gpu_bench.sh", carry [".gpu"], timeout 600 (docs/gpu.md)
# The machine's python3 has torch and transformers 5.x but no LLaMA-Factory, PEFT or datasets: the wheels go into
# folders of their own (pip --target) put on PYTHONPATH, one set for training (transformers 4.52.4, what
# LLaMA-Factory 0.9.3 pins) and one for inference and merging (PEFT on the machine's transformers).
# SMALL=1 rehearses the same flow with the --small shape on a CPU (wheels built for another Python are skipped).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

GPU_DIR=${GPU_DIR:-.gpu}                  # carried: wheels-lf/ wheels-infer/ tokenizer/ amazon2014/
OUT=${OUT:-result/gpu_bench}              # the device call sets OUT; what is written there comes back
WORK_DIR=${WORK_DIR:-/tmp/bench_7b}       # checkpoint, merged model, outputs: about 31 GB at 7B (emptied first)
ENV_DIR=${ENV_DIR:-/tmp/bench_7b_env}     # the installed wheels and the training Python's bin/
BUDGET_S=${BUDGET_S:-530}                 # this whole script, install included; the call's limit is 600 s
SMALL=${SMALL:-0}
EXTRA_ARGS=${EXTRA_ARGS:-}                # more benchmarks.bench_7b options, e.g. "--stages checkpoint,data,train"
# the host Python (lib.sh's choice: .venv's here, python3 on the GPU machine); PYTHON overrides

LF_SITE="$ENV_DIR/lf" INFER_SITE="$ENV_DIR/infer" TRAIN_ENV="$ENV_DIR/train"
host_python=$(cd "$(dirname "$(command -v "$PYTHON")")" && pwd)/$(basename "$PYTHON")  # absolute, links kept

# install_wheels DIR TARGET: every wheel of DIR into TARGET; rehearsing (SMALL=1) on another Python, the wheels
# built for another interpreter are skipped one by one (that environment has its own copies)
install_wheels() {
  local dir=$1 target=$2 whl
  rm -rf "$target"
  mkdir -p "$target"
  if "$host_python" -m pip install -q --no-index --no-deps --no-compile --target "$target" "$dir"/*.whl; then
    return 0
  fi
  if [ "$SMALL" != "1" ]; then return 1; fi
  for whl in "$dir"/*.whl; do
    "$host_python" -m pip install -q --no-index --no-deps --no-compile --target "$target" "$whl" 2>/dev/null \
      || echo "[gpu_bench] skipped $(basename "$whl"): not for $("$host_python" -V 2>&1)"
  done
}

# a training environment as scripts/train_lora.sh expects one: bin/python and bin/llamafactory-cli
write_train_env() {
  mkdir -p "$TRAIN_ENV/bin"
  printf '#!/usr/bin/env bash\nexport PYTHONPATH="%s"\nexec "%s" "$@"\n' "$LF_SITE" "$host_python" \
    > "$TRAIN_ENV/bin/python"
  printf '#!/usr/bin/env bash\nexec "%s" -c "import sys; from llamafactory.cli import main; sys.exit(main())" "$@"\n' \
    "$TRAIN_ENV/bin/python" > "$TRAIN_ENV/bin/llamafactory-cli"
  chmod +x "$TRAIN_ENV/bin/python" "$TRAIN_ENV/bin/llamafactory-cli"
  # several processes: LLaMA-Factory starts torchrun by name (PYTHONPATH is inherited)
  if [ -x "$(dirname "$host_python")/torchrun" ]; then ln -sf "$(dirname "$host_python")/torchrun" "$TRAIN_ENV/bin/"; fi
}

for need in wheels-lf wheels-infer tokenizer amazon2014; do
  if [ ! -d "$GPU_DIR/$need" ]; then
    echo "error: $GPU_DIR/$need missing: run bash scripts/gpu_bench_prepare.sh here and carry $GPU_DIR" >&2
    exit 2
  fi
done
echo "[gpu_bench] host Python $host_python ($("$host_python" -V 2>&1)); installing the wheels into $ENV_DIR"
install_wheels "$GPU_DIR/wheels-lf" "$LF_SITE"
install_wheels "$GPU_DIR/wheels-infer" "$INFER_SITE"
write_train_env
rm -rf "$WORK_DIR"
mkdir -p "$OUT"
echo "[gpu_bench] ready in ${SECONDS}s; the benchmark gets $((BUDGET_S - SECONDS))s"

small=(); if [ "$SMALL" = "1" ]; then small=(--small); fi
split_list extra "$EXTRA_ARGS"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false  # the GPU machine has no network
PYTHONPATH="$INFER_SITE" "$host_python" -m benchmarks.bench_7b --out-dir "$OUT" --work-dir "$WORK_DIR" \
  --raw-dir "$GPU_DIR/amazon2014" --tokenizer "$GPU_DIR/tokenizer" --train-python "$TRAIN_ENV/bin/python" \
  --budget-s $((BUDGET_S - SECONDS)) "${small[@]}" "${extra[@]}"
