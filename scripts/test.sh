#!/usr/bin/env bash
# Set up the environment if needed, then run the whole test suite (real data from ../shared/data).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
exec .venv/bin/python -m pytest "$@"
