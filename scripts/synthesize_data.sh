#!/usr/bin/env bash
# Write the embedded default data: synthetic Amazon-like raw files (2014 layout) for several domains,
# so make_data.sh and the rest of the pipeline run on them unchanged, with no download.
# AGREEMENT sets, per source, how the source's sequential rule relates to the target's:
# 1 the same rule ("stay" on a colour: positive transfer), -1 a conflicting rule ("move on" to the next
# colour of a cycle: negative transfer), 0 unrelated.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT_DIR=${OUT_DIR:-raw/synthetic}
SEED=${SEED:-0}
DOMAINS=${DOMAINS:-"sports beauty toys"}
TARGET=${TARGET:-sports}
AGREEMENT=${AGREEMENT:-"beauty=1.0 toys=-1.0"}  # DOMAIN=VALUE per source, VALUE in [-1, 1]
USERS=${USERS:-3000}                  # shared user pool; each joins a domain with chance OVERLAP
OVERLAP=${OVERLAP:-0.7}
ITEMS=${ITEMS:-600}                   # items per domain (rare ones are dropped to keep 5-core)
MIN_LEN=${MIN_LEN:-6}                 # interactions per user and domain
MAX_LEN=${MAX_LEN:-12}
EXTRA_ARGS=${EXTRA_ARGS:-}            # e.g. --rule-strength 0.9 --carry 0.5 --popularity 1.2
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

# shellcheck disable=SC2086  # DOMAINS, AGREEMENT and EXTRA_ARGS are lists
"$PYTHON" -m data_process.synthesize --out-dir "$OUT_DIR" --seed "$SEED" --domains $DOMAINS \
    --target "$TARGET" --agreement $AGREEMENT --users "$USERS" --overlap "$OVERLAP" \
    --items "$ITEMS" --min-len "$MIN_LEN" --max-len "$MAX_LEN" $EXTRA_ARGS
