#!/usr/bin/env bash
# Step 1 of 6. Download the Amazon 5-core reviews + metadata of each domain into RAW_DIR: any category of the
# 2014 or 2018 release, by category (Prime_Pantry) or short name (prime); see docs/data.md. The paper's
# domains: DOMAINS="beauty sports clothing food".
# RAW_MIRROR: a folder or URL prefix holding the same file names, used instead of the public hosts.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

RAW_DIR=${RAW_DIR:-raw/amazon2014}
DOMAINS=${DOMAINS:-"sports beauty toys"}
RELEASE=${RELEASE:-auto}         # auto (2014 where the category has it, else 2018) | 2014 | 2018
RAW_MIRROR=${RAW_MIRROR:-}

step 1 "download $DOMAINS -> $RAW_DIR"
split_list domains "$DOMAINS"
"$PYTHON" -m data_process.download --raw-dir "$RAW_DIR" --domains "${domains[@]}" --release "$RELEASE" \
  --mirror "$RAW_MIRROR"
