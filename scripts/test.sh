#!/usr/bin/env bash
# Set up both environments if needed, then run the test suite in each (real data from ../shared/data):
#   .venv       every test but the vLLM ones (marker vllm);
#   .venv-vllm  the tests of the modules that must behave the same under its transformers 5 (inference,
#               merging) and the vLLM engine tests.
# Arguments go to both pytest runs (e.g. -q, -x); TESTS=training or TESTS=vllm runs one of them only.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

TESTS=${TESTS:-all}                     # all | training | vllm
VLLM_VENV=${VLLM_VENV:-.venv-vllm}
VLLM_ENV_TESTS=${VLLM_ENV_TESTS:-"tests/test_inference.py tests/test_inference_modes.py tests/test_inference_vllm.py
  tests/test_inference_vllm_real.py tests/test_inference_gpu_path.py tests/test_merge.py tests/test_merge_methods.py
  tests/test_merge_cli.py tests/test_families_vllm.py tests/test_constraint_masks.py"}
# LLaMA-Factory lives in .venv only
VLLM_ENV_DESELECT=${VLLM_ENV_DESELECT:-"tests/test_merge.py::test_llamafactory_loads_the_merged_adapter"}

VLLM=1 VLLM_VENV=$VLLM_VENV bash scripts/setup.sh
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
status=0
if [ "$TESTS" != vllm ]; then
  echo "[test] .venv: training environment"
  .venv/bin/python -m pytest -m "not vllm" "$@" || status=$?
fi
if [ "$TESTS" != training ]; then
  echo "[test] $VLLM_VENV: vLLM environment"
  deselect=(); for t in $VLLM_ENV_DESELECT; do deselect+=(--deselect "$t"); done
  # shellcheck disable=SC2086  # a list of test files
  "$VLLM_VENV/bin/python" -m pytest $VLLM_ENV_TESTS "${deselect[@]}" "$@" || status=$?
fi
exit $status
