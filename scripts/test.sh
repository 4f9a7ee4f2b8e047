#!/usr/bin/env bash
# Set up both environments if needed, then run the test suite in each (real data from ../shared/data):
#   .venv       every test but the vLLM ones (marker vllm);
#   .venv-vllm  the tests of the modules that must behave the same under its transformers 5 (inference,
#               merging) and the vLLM engine tests.
# The two runs go side by side where the machine has room (CONCURRENT=auto: at least 2 cores and 20 GiB of
# memory available; together they peaked at 17 GB on a 2-core, 24 GB machine): neither keeps both cores busy
# (about 60% of two cores on average, one after the other), so together they finish in less time. The .venv
# run prints as it goes; the .venv-vllm run's output is kept in a file and printed when it ends.
# CONCURRENT=1 runs them side by side anyway, CONCURRENT=0 one after the other.
# Arguments go to both pytest runs (e.g. -q, -x); TESTS=training or TESTS=vllm runs one of them only.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

TESTS=${TESTS:-all}                     # all | training | vllm
CONCURRENT=${CONCURRENT:-auto}          # auto | 1: the two environments' runs side by side | 0: one after the other
VLLM_VENV=${VLLM_VENV:-.venv-vllm}
VLLM_ENV_TESTS=${VLLM_ENV_TESTS:-"tests/test_inference.py tests/test_inference_modes.py tests/test_inference_vllm.py
  tests/test_inference_vllm_real.py tests/test_inference_gpu_path.py tests/test_merge.py tests/test_merge_methods.py
  tests/test_merge_cli.py tests/test_families_vllm.py tests/test_constraint_masks.py"}
# LLaMA-Factory lives in .venv only
VLLM_ENV_DESELECT=${VLLM_ENV_DESELECT:-"tests/test_merge.py::test_llamafactory_loads_the_merged_adapter"}

VLLM=1 VLLM_VENV=$VLLM_VENV bash scripts/setup.sh
# PASSIVE: an idle OpenMP thread sleeps instead of spinning on a core the other run needs
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}

run_training() {
  echo "[test] .venv: training environment"
  .venv/bin/python -m pytest -m "not vllm" "$@"
}
run_vllm() {
  echo "[test] $VLLM_VENV: vLLM environment"
  local deselect=() t
  for t in $VLLM_ENV_DESELECT; do deselect+=(--deselect "$t"); done
  # its own pytest cache: the two runs may write theirs at the same moment
  # shellcheck disable=SC2086  # a list of test files
  "$VLLM_VENV/bin/python" -m pytest -o cache_dir=.pytest_cache/vllm $VLLM_ENV_TESTS "${deselect[@]}" "$@"
}

if [ "$CONCURRENT" = auto ]; then
  free_gib=$(awk '/^MemAvailable:/ {print int($2 / 1048576)}' /proc/meminfo 2>/dev/null || echo 0)
  CONCURRENT=0
  if [ "$(nproc)" -ge 2 ] && [ "${free_gib:-0}" -ge 20 ]; then CONCURRENT=1; fi
  [ "$TESTS" = all ] && [ "$CONCURRENT" = 0 ] && echo "[test] ${free_gib:-?} GiB available, $(nproc) cores: \
the two environments' runs go one after the other (CONCURRENT=1 runs them side by side)"
fi

status=0
if [ "$TESTS" = all ] && [ "$CONCURRENT" = 1 ]; then
  log=$(mktemp "${TMPDIR:-/tmp}/weaverec-test-vllm.XXXXXX")
  # its own process group, so that an interrupted suite ends it and every process it started
  export -f run_vllm
  export VLLM_VENV VLLM_ENV_TESTS VLLM_ENV_DESELECT
  setsid bash -c 'run_vllm "$@"' run_vllm "$@" > "$log" 2>&1 &
  vllm_pid=$!
  trap 'kill -- -"$vllm_pid" 2>/dev/null || true; rm -f "$log"' EXIT
  echo "[test] $VLLM_VENV runs at the same time; its output follows when it ends"
  run_training "$@" || status=$?
  wait "$vllm_pid" || status=$?
  cat "$log"
else
  if [ "$TESTS" != vllm ]; then run_training "$@" || status=$?; fi
  if [ "$TESTS" != training ]; then run_vllm "$@" || status=$?; fi
fi
exit $status
