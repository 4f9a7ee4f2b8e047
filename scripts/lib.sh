# Sourced by every script in scripts/ (after `cd` to the repository root): what they all repeat, once.
#
# Conventions of the scripts (one name per concept, one default per variable, tests/test_scripts.py
# checks it): a variable set by several scripts has the same default in each (quickstart.sh, a preset of
# small sizes, is the one exception for sizes); folders are DATA_DIR (LLaMA-Factory's dataset_dir:
# traindata), TEST_DIR, SAVE_DIR, RAW_DIR, RUN_DIR; lists are space-separated strings (SOURCES, DOMAINS);
# extra options for a stage are EXTRA_ARGS, or TRAIN_ARGS (LLaMA-Factory key=value overrides),
# MERGE_ARGS (merge/merge_lora.py) and INFER_ARGS (inference/generate.py) where a script runs several.

# the training environment's Python (PYTHON overrides), and the one inference uses: the vLLM environment's
# when BACKEND asks for vllm (or auto) and it exists (INFER_PYTHON overrides)
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
infer_python() {
  if [ -n "${INFER_PYTHON:-}" ]; then echo "$INFER_PYTHON"
  elif [ "${BACKEND:-auto}" != hf ] && [ -x .venv-vllm/bin/python ]; then echo .venv-vllm/bin/python
  else echo "$PYTHON"; fi
}

# split_list NAME "a b c": the array NAME holds the words of the string
split_list() { read -r -a "$1" <<< "$2"; }

# dataset names, as data_process.construct registers them
hybrid_name() { echo "$1_$2"; }                        # hybrid_name T S -> T_S
mixed_name() { local IFS=_; echo "$*"; }               # mixed_name T S1 S2 -> T_S1_S2

# step N TITLE: the numbered step this script is, in the README's order
step() { echo "[$(basename "$0" .sh)] step $1 of 6: $2"; }

# run_logged LOG CMD...: CMD's output goes to LOG; when it fails, the log's last lines and one error line
# (CMD may be a function: set -e does not stop it inside, so it must return its own failures)
run_logged() {
  local log=$1 status=0 name arg; shift
  name=$1; for arg in "$@"; do case $arg in *.sh) name=$arg; break ;; esac; done  # env VAR=x bash s.sh: s.sh
  mkdir -p "$(dirname "$log")"
  "$@" >> "$log" 2>&1 || status=$?
  if [ "$status" -ne 0 ]; then
    tail -n "${LOG_TAIL:-30}" "$log" >&2
    echo "error: $name failed (exit $status); full log: $log" >&2
  fi
  return "$status"
}

# queue_job JOBS TEST_FILE BASE_MODEL OUT [ADAPTER]: one line of an inference.generate --jobs file, so that
# several outputs share one inference process (one engine load)
queue_job() {
  "$PYTHON" -c 'import json, sys
jobs, test, base, out, *adapter = sys.argv[1:]
with open(jobs, "a", encoding="utf-8") as f:
    f.write(json.dumps({"test_file": test, "base_model": base, "adapter": adapter, "out": out}) + "\n")' "$@"
}
