#!/usr/bin/env bash
# Fill $GPU_DIR (.gpu/) with what scripts/gpu_bench.sh needs on the lent GPU machine, where ../shared does not
# travel: the wheels that machine lacks (LLaMA-Factory's training set, PEFT for inference), the Qwen2-7B-Instruct
# tokenizer and the raw Sports files the benchmark reads. Adds $GPU_DIR to .git/info/exclude (a device call
# carries only ignored paths) and checks the folder fits the carry limit. Then carry [".gpu"] (docs/gpu.md).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

SHARED=${SHARED:-../shared}
GPU_DIR=${GPU_DIR:-.gpu}
WHEELS_LF=${WHEELS_LF:-$SHARED/gpu/wheels-lf}          # training: LLaMA-Factory 0.9.3, transformers 4.52.4, ...
WHEELS_INFER=${WHEELS_INFER:-$SHARED/gpu/wheels-infer}  # inference and merging: PEFT 0.21.2
SHARED_TOKENIZER=${SHARED_TOKENIZER:-$SHARED/models/qwen2-7b-instruct-tokenizer}
SHARED_DATA=${SHARED_DATA:-$SHARED/data/amazon2014}
RAW_FILES=${RAW_FILES:-"reviews_Sports_and_Outdoors_5.json.gz meta_Sports_and_Outdoors.json.gz"}
MAX_MIB=${MAX_MIB:-64}                                  # what one device call carries

rm -rf "$GPU_DIR"
mkdir -p "$GPU_DIR/wheels-lf" "$GPU_DIR/wheels-infer" "$GPU_DIR/tokenizer" "$GPU_DIR/amazon2014"
cp "$WHEELS_LF"/*.whl "$GPU_DIR/wheels-lf/"
cp "$WHEELS_INFER"/*.whl "$GPU_DIR/wheels-infer/"
cp "$SHARED_TOKENIZER"/* "$GPU_DIR/tokenizer/"
split_list raw_files "$RAW_FILES"
for name in "${raw_files[@]}"; do cp "$SHARED_DATA/$name" "$GPU_DIR/amazon2014/"; done
chmod -R u+w "$GPU_DIR"  # the shared copies are read-only

exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
if ! grep -qxF "/$GPU_DIR/" "$exclude" 2>/dev/null; then echo "/$GPU_DIR/" >> "$exclude"; fi

bytes=$(du -sb "$GPU_DIR" | cut -f1)
mib=$((bytes / 1048576))
echo "[gpu_bench_prepare] wrote $GPU_DIR: $(find "$GPU_DIR" -type f | wc -l) files, $mib MiB" \
     "(wheels $(du -sm "$GPU_DIR/wheels-lf" "$GPU_DIR/wheels-infer" | awk '{s += $1} END {print s}') MiB," \
     "tokenizer $(du -sm "$GPU_DIR/tokenizer" | cut -f1) MiB, data $(du -sm "$GPU_DIR/amazon2014" | cut -f1) MiB)"
if [ "$bytes" -gt $((MAX_MIB * 1048576)) ]; then
  echo "error: $GPU_DIR is $mib MiB, over the $MAX_MIB MiB a device call carries" >&2
  exit 1
fi
