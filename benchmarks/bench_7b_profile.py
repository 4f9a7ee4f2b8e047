"""Profile the hf backend in-process: reads a model folder and a test file; writes torch.profiler's table of
the top operators (by self CUDA time on a GPU, self CPU time on a CPU) to --out.

The runner is inference.hf_backend.HFRunner, as inference.generate builds it; a first batch of prompts warms
the model up (outside the profile), the next --prompts are profiled. With --sdpa-backends (auto: cuDNN
attention kept off, torch: torch's own choice; inference/loading.py) the forward passes run under that
choice; without it, torch's default.

    python -m benchmarks.bench_7b_profile --model M --test-file T --out profile.txt [--mode score]
        [--dtype bfloat16] [--device auto] [--sdpa-backends auto|torch] [--prompts 8]
"""

import argparse
import contextlib
import time

import torch

from common.cli import run_main
from common.io import write_text_atomic


def sdpa_context(choice):
    """inference.loading.attention_backends(choice) where the project has it, else nothing."""
    if choice is None:
        return contextlib.nullcontext()
    from inference.loading import attention_backends

    return attention_backends(choice)


def examples(tok, test_file, mode, count):
    """The first `count` test examples with their prompt ids, longest first (as inference.generate)."""
    from inference.examples import read_tests
    from inference.records import prompt_ids

    rows = read_tests(test_file, mode, count)
    for ex in rows:
        ex["prompt_ids"] = prompt_ids(tok, ex["system"], ex["user"])
    return sorted(rows, key=lambda ex: (-len(ex["prompt_ids"]), ex["id"]))


def profile_table(runner, chunk, device, rows=25):
    from torch.profiler import ProfilerActivity, profile

    cuda = device.startswith("cuda")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        runner(chunk)
        if cuda:
            torch.cuda.synchronize()
    sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=sort, row_limit=rows)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--test-file", required=True)
    p.add_argument("--out", required=True, help="text file for the table")
    p.add_argument("--mode", choices=["constrained", "score"], default="score")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--sdpa-backends", choices=["auto", "torch"], help="default: torch's own choice")
    p.add_argument("--prompts", type=int, default=8, help="prompts profiled (as many more warm up first)")
    p.add_argument("--batch-size", type=int, default=8)
    args = p.parse_args(argv)

    from inference.hf_backend import HFRunner
    from inference.loading import load_model, load_tokenizer, resolve_device

    device = resolve_device(args.device)
    tok = load_tokenizer(args.model)
    model = load_model(args.model, (), device, args.dtype, tok)
    todo = examples(tok, args.test_file, args.mode, 2 * args.prompts)
    warm, profiled = todo[:len(todo) // 2], todo[len(todo) // 2:]  # the test file may hold fewer
    runner = HFRunner(model, tok, mode=args.mode, batch_size=args.batch_size)
    with sdpa_context(args.sdpa_backends):
        if warm:
            runner(warm)
        start = time.time()
        table = profile_table(runner, profiled, device)
    seconds = time.time() - start
    head = (f"{args.mode}, {args.dtype} on {device}, sdpa backends {args.sdpa_backends or 'torch default'}, "
            f"{len(profiled)} prompts at batch {args.batch_size} after {len(warm)} to warm up, "
            f"torch {torch.__version__}: {seconds:.2f}s profiled\n")
    write_text_atomic(args.out, head + table + "\n")
    print(head + table, flush=True)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    run_main(main)
