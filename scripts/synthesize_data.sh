#!/usr/bin/env bash
# The embedded default data: synthetic Amazon-like raw files (2014 layout) for several domains in $SYNTH_DIR,
# which make_data.sh and the rest of the pipeline read unchanged, with no download (data_process/synthesize.py).
# AGREEMENT sets, per source, how the source's sequential rule relates to the target's:
# 1 the same rule ("stay" on a colour: positive transfer), -1 a conflicting rule ("move on" to the next
# colour of a cycle: negative transfer), 0 unrelated.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

SYNTH_DIR=${SYNTH_DIR:-raw/synthetic}
SYNTH_SEED=${SYNTH_SEED:-0}           # the synthetic world (users, items, sequences)
DOMAINS=${DOMAINS:-"sports beauty toys"}
TARGET=${TARGET:-sports}
AGREEMENT=${AGREEMENT:-"beauty=1.0 toys=-1.0"}  # DOMAIN=VALUE per source, VALUE in [-1, 1]
N_USERS=${N_USERS:-3000}              # shared user pool; each joins a domain with chance OVERLAP
OVERLAP=${OVERLAP:-0.7}
N_ITEMS=${N_ITEMS:-600}               # items per domain (rare ones are dropped to keep 5-core)
MIN_LEN=${MIN_LEN:-6}                 # interactions per user and domain
MAX_LEN=${MAX_LEN:-12}
EXTRA_ARGS=${EXTRA_ARGS:-}            # e.g. --rule-strength 0.9 --carry 0.5 --popularity 1.2

echo "[synthesize_data] $DOMAINS (target $TARGET, agreement $AGREEMENT) -> $SYNTH_DIR"
split_list domains "$DOMAINS"
split_list agreement "$AGREEMENT"
split_list extra "$EXTRA_ARGS"
"$PYTHON" -m data_process.synthesize --out-dir "$SYNTH_DIR" --seed "$SYNTH_SEED" --domains "${domains[@]}" \
  --target "$TARGET" --agreement "${agreement[@]}" --users "$N_USERS" --overlap "$OVERLAP" \
  --items "$N_ITEMS" --min-len "$MIN_LEN" --max-len "$MAX_LEN" "${extra[@]}"
