"""Inference throughput on CPU: samples/s at batch size 1 vs the default batch, for each mode.

Reads real test prompts (testdata/<domain>.jsonl if given, else built from the Amazon 2014 files) and a
model folder (models/tiny-qwen2 if given, else a random tiny Qwen2 built here); prints a table.

    python -m benchmarks.bench_inference --data-dir ../shared/data/amazon2014 --work-dir /tmp/bench
"""

import argparse
import gc
import os
import statistics
import time

from common.cli import UserError, run_main
from common.io import write_jsonl_atomic
from common.prompt import (
    CANDIDATES_CLOSE,
    CANDIDATES_OPEN,
    HISTORY_OPEN,
    SEP,
    SYSTEM,
)
from inference.generate import DEFAULT_BATCH_SIZE
from tests.helpers import asin_titles, real_prompts


def random_tiny_model(data_dir, out_dir, vocab_size=8192, category="Beauty"):
    """A random tiny Qwen2 (hidden 64, 2 layers) with a BPE tokenizer trained on real titles."""
    from models.tiny import init_model, save_model, tiny_config
    from models.tokenizer import train_tokenizer

    texts = list(asin_titles(data_dir, category).values())
    tok = train_tokenizer(texts + [SYSTEM, HISTORY_OPEN, CANDIDATES_OPEN, CANDIDATES_CLOSE, SEP],
                          vocab_size=vocab_size)
    model = init_model(tiny_config(tok, hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1))
    save_model(model, tok, out_dir)
    return out_dir


def throughput(runner, examples, batch_size):
    """(samples/s, generated tokens/s) over `examples` (prompt ids prepared), `batch_size` rows decoded
    at once, in chunks of CHUNK_BATCHES batches as inference.generate hands them over."""
    from inference.generate import CHUNK_BATCHES, batches_by_length

    tokens = []
    generate = runner._generate

    def counted(*args):
        out = generate(*args)
        tokens.append(sum(map(len, out)))
        return out

    runner._generate = counted
    runner.batch_size = batch_size
    start = time.perf_counter()
    for batch in batches_by_length(examples, batch_size * CHUNK_BATCHES):
        runner(batch)
    seconds = time.perf_counter() - start
    runner._generate = generate
    return len(examples) / seconds, sum(tokens) / seconds


def spread(values):
    return f"{statistics.median(values):.2f} [{values[0]:.2f}-{values[-1]:.2f}]"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", help="Amazon 2014 files (needed without --test-file or --model)")
    p.add_argument("--test-file", help="testdata/<domain>.jsonl (default: built from --data-dir)")
    p.add_argument("--model", help="model folder (default: a random tiny Qwen2 built in --work-dir)")
    p.add_argument("--work-dir", required=True)
    p.add_argument("--prompts", type=int, default=200)
    p.add_argument("--single-prompts", type=int, default=48, help="prompts timed at batch size 1")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                   help="the batched run (default: inference.generate's default)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved runs; medians are printed")
    p.add_argument("--max-new-tokens", type=int, default=128, help="free mode: about 5 titles")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--modes", nargs="+", choices=["free", "constrained", "score"],
                   default=["free", "constrained", "score"])
    p.add_argument("--vocab-size", type=int, default=8192, help="tokenizer of the built model")
    args = p.parse_args(argv)
    if not args.data_dir and not (args.test_file and args.model):
        raise UserError("--data-dir is needed to build the prompts or the model")

    import torch

    torch.set_num_threads(args.threads)
    from inference.generate import read_tests
    from inference.hf_backend import HFRunner
    from inference.loading import load_model, load_tokenizer

    os.makedirs(args.work_dir, exist_ok=True)
    test_file = args.test_file or os.path.join(args.work_dir, "bench_test.jsonl")
    if not args.test_file:
        write_jsonl_atomic(test_file, real_prompts(args.data_dir, args.prompts, tricky=0))
    model_dir = args.model or random_tiny_model(args.data_dir, os.path.join(args.work_dir, "model"),
                                                   args.vocab_size)
    tok = load_tokenizer(model_dir)
    model = load_model(model_dir, (), "cpu", "float32", tok)
    examples = read_tests(test_file, "score", args.prompts)
    gc.freeze()  # as inference.generate does after loading
    lengths = []
    for ex in examples:
        ex["prompt_ids"] = HFRunner(model, tok).prompt_ids(ex["system"], ex["user"])
        lengths.append(len(ex["prompt_ids"]))
    print(f"{len(examples)} prompts, {sum(lengths) / len(lengths):.0f} tokens on average; "
          f"torch threads {torch.get_num_threads()}; free mode max_new_tokens {args.max_new_tokens}")
    print(f"median of {args.repeats} interleaved runs (batch 1 on the first {args.single_prompts} "
          f"prompts, then batch {args.batch_size} on all), min-max in brackets")
    print(f"| mode | batch 1 (samples/s) | batch {args.batch_size} (samples/s) | speed-up "
          f"| batch {args.batch_size} generated tokens/s |")
    print("| --- | --- | --- | --- | --- |")
    for mode in args.modes:
        def run(prompts, batch_size):  # a new runner: nothing cached from the last run
            return throughput(HFRunner(model, tok, mode, args.max_new_tokens), prompts, batch_size)

        runs = [(run(examples[:args.single_prompts], 1)[0], *run(examples, args.batch_size))
                for _ in range(args.repeats)]
        single, batched, tokens = (sorted(column) for column in zip(*runs))
        tokens = f"{statistics.median(tokens):.0f}" if tokens[-1] else "-"
        print(f"| {mode} | {spread(single)} | {spread(batched)} "
              f"| {statistics.median(batched) / statistics.median(single):.1f}x | {tokens} |", flush=True)
    return 0


if __name__ == "__main__":
    run_main(main)
