#!/usr/bin/env bash
# Download the Amazon 5-core reviews + metadata of each domain into RAW_DIR: any category of the 2014 or
# 2018 release, by category (Prime_Pantry) or short name (prime); see common/domains.py.
# RAW_MIRROR: a folder or URL prefix holding the same file names, used instead of the public hosts.
set -euo pipefail
cd "$(dirname "$0")/.."

RAW_DIR=${RAW_DIR:-raw/amazon2014}
DOMAINS=${DOMAINS:-"beauty sports clothing food"}
RELEASE=${RELEASE:-auto}         # auto (2014 where the category has it, else 2018) | 2014 | 2018
RAW_MIRROR=${RAW_MIRROR:-}
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

# shellcheck disable=SC2086  # DOMAINS is a list
"$PYTHON" -m data_process.download --raw-dir "$RAW_DIR" --domains $DOMAINS --release "$RELEASE" \
    --mirror "$RAW_MIRROR"
