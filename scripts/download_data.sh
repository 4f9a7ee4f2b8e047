#!/usr/bin/env bash
# Download the Amazon 2014 5-core reviews + metadata of each domain into RAW_DIR.
# RAW_MIRROR: a folder or URL prefix holding the same file names, used instead of the public host.
set -euo pipefail
cd "$(dirname "$0")/.."

RAW_DIR=${RAW_DIR:-raw/amazon2014}
DOMAINS=${DOMAINS:-"beauty sports clothing food"}
RAW_MIRROR=${RAW_MIRROR:-}
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

# shellcheck disable=SC2086  # DOMAINS is a list
"$PYTHON" -m data_process.download --raw-dir "$RAW_DIR" --domains $DOMAINS --mirror "$RAW_MIRROR"
