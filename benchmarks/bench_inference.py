"""Inference throughput on CPU, hf against vllm: samples/s in each mode on the same real prompts, and
start-up times. Runs in the vLLM environment (.venv-vllm), which has both backends.

Reads real test prompts (testdata/<domain>.jsonl if given, else built from the Amazon 2014 files) and a
model folder (--model, else a random tiny Qwen2 built here); each backend runs every chunk the way
inference.generate hands it over, at the CLI's default settings. Repeats are interleaved (hf, vllm, hf,
vllm, ...) and medians printed with their range, since the machine is shared. With --adapter-rank R, a
random rank-R adapter is also served both ways vLLM offers: as a LoRA request and merged into the weights.

    .venv-vllm/bin/python -m benchmarks.bench_inference --data-dir ../shared/data/amazon2014 --work-dir /tmp/bench
"""

import argparse
import os
import statistics
import time

from common.cli import UserError, run_main
from common.io import write_jsonl_atomic
from common.prompt import CANDIDATES_CLOSE, CANDIDATES_OPEN, HISTORY_OPEN, SEP, SYSTEM
from inference.generate import DEFAULT_BATCH_SIZE, CHUNK_BATCHES
from tests.helpers import asin_titles, make_adapter, real_prompts

MODES = ["free", "constrained", "score"]


def random_tiny_model(data_dir, out_dir, vocab_size=8192, category="Beauty"):
    """A random tiny Qwen2 (hidden 64, 2 layers, 2 heads of 32) with a BPE tokenizer trained on real titles."""
    from models.tiny import init_model, save_model, tiny_config
    from models.tokenizer import train_tokenizer

    texts = list(asin_titles(data_dir, category).values())
    tok = train_tokenizer(texts + [SYSTEM, HISTORY_OPEN, CANDIDATES_OPEN, CANDIDATES_CLOSE, SEP],
                          vocab_size=vocab_size)
    model = init_model(tiny_config(tok, hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1))
    save_model(model, tok, out_dir)
    return out_dir


def timed(runner, chunks):
    start = time.perf_counter()
    for chunk in chunks:
        runner(chunk)
    return sum(map(len, chunks)) / (time.perf_counter() - start)


def spread(values):
    values = sorted(values)
    return f"{statistics.median(values):.2f} [{values[0]:.2f}-{values[-1]:.2f}]"


def load(model_dir, test_file, n, batch_size):
    from inference.generate import read_tests
    from inference.loading import load_model, load_tokenizer
    from inference.records import prompt_ids

    start = time.perf_counter()
    tok = load_tokenizer(model_dir)
    model = load_model(model_dir, (), "cpu", "float32", tok)
    seconds = time.perf_counter() - start
    examples = read_tests(test_file, "score", n)
    for ex in examples:
        ex["prompt_ids"] = prompt_ids(tok, ex["system"], ex["user"])
    order = sorted(examples, key=lambda ex: (-len(ex["prompt_ids"]), ex["id"]))
    size = batch_size * CHUNK_BATCHES
    return tok, model, seconds, [order[i:i + size] for i in range(0, len(order), size)]


def engine(model_dir, how="merge", adapters=(), max_lora_rank=None):
    from inference.vllm_engine import Engine, cpu_settings

    cpu_settings()
    start = time.perf_counter()
    eng = Engine(model_dir, list(adapters), how, model_dir, "float32", max_lora_rank=max_lora_rank)
    return eng, time.perf_counter() - start


def adapter_rows(args, model_dir, tok, chunks, hf_model):
    """free and score with a random adapter: hf (merged), vllm LoRA request, vllm merged weights."""
    from inference.hf_backend import HFRunner
    from inference.loading import load_model
    from inference.vllm_backend import VLLMRunner

    adapter = str(make_adapter(model_dir, os.path.join(args.work_dir, f"adapter_r{args.adapter_rank}"), seed=1,
                               r=args.adapter_rank, alpha=2 * args.adapter_rank))
    merged_hf = load_model(model_dir, [adapter], "cpu", "float32", tok)
    lora_engine, _ = engine(model_dir, "lora", max_lora_rank=args.adapter_rank)
    merge_engine, _ = engine(model_dir, "merge", [adapter])
    print(f"\nrank-{args.adapter_rank} adapter, one run each (samples/s)")
    print("| mode | hf (merged) | vllm LoRA request | vllm merged weights |\n| --- | --- | --- | --- |")
    for mode in ("free", "score"):
        hf = timed(HFRunner(merged_hf, tok, mode, args.max_new_tokens), chunks)
        lora = timed(VLLMRunner(lora_engine, tok, mode, args.max_new_tokens,
                                lora=lora_engine.serve(model_dir, [adapter])), chunks)
        merge = timed(VLLMRunner(merge_engine, tok, mode, args.max_new_tokens), chunks)
        print(f"| {mode} | {hf:.2f} | {lora:.2f} | {merge:.2f} |", flush=True)
    lora_engine.close()
    merge_engine.close()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", help="Amazon 2014 files (needed without --test-file or --model)")
    p.add_argument("--test-file", help="testdata/<domain>.jsonl (default: built from --data-dir)")
    p.add_argument("--model", help="model folder (default: a random tiny Qwen2 built in --work-dir)")
    p.add_argument("--work-dir", required=True)
    p.add_argument("--prompts", type=int, default=200)
    p.add_argument("--repeats", type=int, default=3, help="interleaved runs; medians are printed")
    p.add_argument("--max-new-tokens", type=int, default=128, help="free mode: about 5 titles")
    p.add_argument("--threads", type=int, help="hf: torch threads (default: torch's, as the CLI)")
    p.add_argument("--modes", nargs="+", choices=MODES, default=MODES)
    p.add_argument("--adapter-rank", type=int, help="also time a random adapter of this rank (LoRA vs merged)")
    args = p.parse_args(argv)
    if not args.data_dir and not (args.test_file and args.model):
        raise UserError("--data-dir is needed to build the prompts or the model")
    import torch

    from inference.hf_backend import HFRunner
    from inference.vllm_backend import VLLMRunner

    if args.threads:
        torch.set_num_threads(args.threads)
    os.makedirs(args.work_dir, exist_ok=True)
    test_file = args.test_file or os.path.join(args.work_dir, "bench_test.jsonl")
    if not args.test_file:
        write_jsonl_atomic(test_file, real_prompts(args.data_dir, args.prompts, tricky=0))
    model_dir = args.model or os.path.join(args.work_dir, "model")
    if not args.model and not os.path.isfile(os.path.join(model_dir, "config.json")):
        random_tiny_model(args.data_dir, model_dir)
    load_before = os.getloadavg()
    tok, model, hf_start, chunks = load(model_dir, test_file, args.prompts, DEFAULT_BATCH_SIZE)
    eng, vllm_start = engine(model_dir)
    lengths = [len(ex["prompt_ids"]) for c in chunks for ex in c]
    print(f"{len(lengths)} prompts, {sum(lengths) / len(lengths):.0f} tokens on average; hf torch threads "
          f"{torch.get_num_threads()}, batch {DEFAULT_BATCH_SIZE}; free mode max_new_tokens {args.max_new_tokens}")
    print(f"start-up: hf model load {hf_start:.1f}s, vllm engine {vllm_start:.1f}s (after imports)")
    print(f"median of {args.repeats} interleaved runs, min-max in brackets (samples/s)")
    print("| mode | hf | vllm | vllm / hf |\n| --- | --- | --- | --- |")
    for mode in args.modes:
        hf, vl = [], []
        for _ in range(args.repeats):
            hf.append(timed(HFRunner(model, tok, mode, args.max_new_tokens), chunks))
            vl.append(timed(VLLMRunner(eng, tok, mode, args.max_new_tokens), chunks))
        print(f"| {mode} | {spread(hf)} | {spread(vl)} | {statistics.median(vl) / statistics.median(hf):.1f}x |",
              flush=True)
    eng.close()
    if args.adapter_rank:
        adapter_rows(args, model_dir, tok, chunks, model)
    load_after = os.getloadavg()
    print(f"load average (1 min) before {load_before[0]:.2f}, after {load_after[0]:.2f} on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    run_main(main)
