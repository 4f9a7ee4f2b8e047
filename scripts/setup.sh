#!/usr/bin/env bash
# Create the Python environment (.venv) with everything the pipeline needs, CPU-only.
# Skips the install when requirements.txt has not changed since the last successful one.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON_BIN=${PYTHON_BIN:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV with $($PYTHON_BIN --version 2>&1)"
  "$PYTHON_BIN" -m venv "$VENV"
fi
stamp="$VENV/.requirements.sha256"
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "[setup] $VENV is up to date with requirements.txt"
  exit 0
fi
echo "[setup] installing requirements.txt into $VENV (about 2.3 GB, a few minutes on a cold cache)"
"$VENV/bin/python" -m pip install --upgrade --quiet pip 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -m pip install --quiet -r requirements.txt 2>&1 | grep -v "^WARNING: Location" || true
# pip's status is hidden by the filter above: check the install really worked
"$VENV/bin/python" -c "import torch, transformers, peft, llamafactory, datasets, tokenizers" \
  || { echo "[setup] error: the install did not complete (see pip's messages above)" >&2; exit 1; }
echo "$want" > "$stamp"
echo "[setup] done: $("$VENV/bin/python" -c 'import torch, llamafactory; print("torch", torch.__version__, "llamafactory", llamafactory.__version__)')"
