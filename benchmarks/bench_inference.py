"""Inference throughput on CPU, hf against vllm: samples/s in each mode on the same real prompts, start-up
apart, and whole CLI runs (start-up included) of the quickstart's size. Runs in the vLLM environment
(.venv-vllm), which has both backends.

How it stays fair: each timing runs in a process of its own (benchmarks/bench_inference_worker.py), one at
a time, so the hf runs never share the machine with a live vLLM engine (its bound OpenMP thread keeps a
core busy, and hf's torch threads then crawl: the in-process version of this benchmark measured hf 25x
too slow in free mode). Repeats alternate the order (hf, vllm; vllm, hf; ...); medians are printed with
their range, since the machine is shared. Each backend runs at the CLI's defaults (hf: batch 32, torch's
threads; vllm: eager, vLLM's `auto` thread binding) unless --threads / --compile / --engine-args say
otherwise. Then `python -m inference.generate` itself is timed per backend and mode on --cli-prompts
prompts, as `--jobs` runs of 1 and of --cli-rows rows (compare.sh's quickstart serves 7 rows of 300 users
per engine), which is what `--backend auto`'s choice per mode rests on.

Prompts: testdata/<domain>.jsonl (--test-file) or real Beauty prompts built from the Amazon 2014 files.
Model: --model, or --size tiny (hidden 64, 2 layers, 2 heads of 32, the tests' size) or --size base
(models/build_base.py's defaults: hidden 128, 2 layers, 4 heads of 32, 2 KV heads), random weights and a
BPE tokenizer of 8,192 tokens trained on real titles.

    .venv-vllm/bin/python -m benchmarks.bench_inference --data-dir ../shared/data/amazon2014 --work-dir /tmp/bench
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from common.cli import UserError, run_main
from common.io import write_jsonl_atomic
from common.prompt import CANDIDATES_CLOSE, CANDIDATES_OPEN, HISTORY_OPEN, SEP, SYSTEM
from tests.helpers import REPO, asin_titles, make_adapter, real_prompts

MODES = ["free", "constrained", "score"]
BACKENDS = ["hf", "vllm"]
SIZES = {"tiny": {"hidden_size": 64, "num_layers": 2, "num_heads": 2, "num_kv_heads": 1},
         "base": {"hidden_size": 128, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2}}


def random_model(data_dir, out_dir, size, vocab_size=8192, category="Beauty"):
    """A random Qwen2 of SIZES[size] with a BPE tokenizer trained on real titles."""
    from models.tiny import init_model, save_model, tiny_config
    from models.tokenizer import train_tokenizer

    texts = list(asin_titles(data_dir, category).values())
    tok = train_tokenizer(texts + [SYSTEM, HISTORY_OPEN, CANDIDATES_OPEN, CANDIDATES_CLOSE, SEP],
                          vocab_size=vocab_size)
    save_model(init_model(tiny_config(tok, **SIZES[size])), tok, out_dir)
    return out_dir


def spread(values):
    values = sorted(values)
    return f"{statistics.median(values):.2f} [{values[0]:.2f}-{values[-1]:.2f}]"


def worker(args, backend, name, *extra):
    """One backend's timings in its own process; returns its JSON result."""
    result = os.path.join(args.work_dir, f"{name}.json")
    cmd = [sys.executable, "-m", "benchmarks.bench_inference_worker", "--backend", backend,
           "--model", args.model, "--test-file", args.test_file, "--prompts", str(args.prompts),
           "--max-new-tokens", str(args.max_new_tokens), "--result", result, *extra]
    if backend == "vllm":
        cmd += ["--engine-args", args.engine_args] + (["--compile"] if args.compile else [])
        cmd += ["--threads", str(args.vllm_threads)] if args.vllm_threads else []
    elif args.hf_threads:
        cmd += ["--threads", str(args.hf_threads)]
    with open(os.path.join(args.work_dir, f"{name}.log"), "w") as log:
        proc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, check=False)
    if proc.returncode:
        raise UserError(f"{backend} worker failed (log: {log.name})")
    with open(result, encoding="utf-8") as f:
        return json.load(f)


def throughput(args):
    runs = {b: [] for b in BACKENDS}
    for r in range(args.repeats):
        for backend in (BACKENDS if r % 2 == 0 else BACKENDS[::-1]):
            runs[backend].append(worker(args, backend, f"{backend}-{r}", "--modes", *args.modes))
    hf, vl = runs["hf"], runs["vllm"]
    print(f"{hf[0]['prompts']} prompts, {hf[0]['mean_prompt_tokens']:.0f} tokens on average; hf "
          f"{hf[0]['settings']}, batch 32; vllm {vl[0]['settings'] or 'auto binding'}; free mode max_new_tokens "
          f"{args.max_new_tokens}")
    print(f"start-up (median): hf imports {statistics.median(x['import_s'] for x in hf):.1f}s + model "
          f"{statistics.median(x['start_s'] for x in hf):.1f}s; vllm imports "
          f"{statistics.median(x['import_s'] for x in vl):.1f}s + engine {spread([x['start_s'] for x in vl])}s")
    print(f"median of {args.repeats} runs, each backend in its own process, min-max in brackets (samples/s)")
    print("| mode | hf | vllm | vllm / hf |\n| --- | --- | --- | --- |")
    for mode in args.modes:
        h, v = [x["rates"][mode] for x in hf], [x["rates"][mode] for x in vl]
        print(f"| {mode} | {spread(h)} | {spread(v)} | {statistics.median(v) / statistics.median(h):.2f}x |")
    return runs


def adapter_rows(args):
    """free and score with a random rank-R adapter: hf (merged), vllm LoRA request, vllm merged weights."""
    path = str(make_adapter(args.model, os.path.join(args.work_dir, f"adapter_r{args.adapter_rank}"), seed=1,
                            r=args.adapter_rank, alpha=2 * args.adapter_rank))
    kinds = [("hf (merged)", "hf", []), ("vllm LoRA request", "vllm", ["--vllm-adapters", "lora"]),
             ("vllm merged weights", "vllm", ["--vllm-adapters", "merge"])]
    rates = [worker(args, b, f"adapter-{i}", "--modes", "free", "score", "--adapter", path, *x)["rates"]
             for i, (_, b, x) in enumerate(kinds)]
    print(f"\nrank-{args.adapter_rank} adapter, one run each (samples/s)")
    print("| mode | " + " | ".join(k for k, _, _ in kinds) + " |\n| --- |" + " --- |" * len(kinds))
    for mode in ("free", "score"):
        print(f"| {mode} | " + " | ".join(f"{r[mode]:.2f}" for r in rates) + " |")


def cli_run(args, backend, mode, rows):
    """Seconds for one `python -m inference.generate --jobs` call of `rows` outputs of --cli-prompts."""
    folder = os.path.join(args.work_dir, "cli", f"{backend}-{mode}-{rows}")
    os.makedirs(folder, exist_ok=True)
    jobs = os.path.join(folder, "rows.jobs")
    outs = [os.path.join(folder, f"row{i}", "output.jsonl") for i in range(rows)]
    for out in outs:
        for suffix in ("", ".progress", ".run.json"):
            if os.path.exists(out + suffix):
                os.remove(out + suffix)
    write_jsonl_atomic(jobs, [{"test_file": args.test_file, "base_model": args.model, "out": o} for o in outs])
    cmd = [sys.executable, "-m", "inference.generate", "--jobs", jobs, "--mode", mode, "--backend", backend,
           "--max-new-tokens", str(args.max_new_tokens), "--limit", str(args.cli_prompts)]
    start = time.perf_counter()
    with open(os.path.join(folder, "console.log"), "w") as log:
        proc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, check=False)
    if proc.returncode:
        raise UserError(f"inference.generate failed (log: {log.name})")
    return time.perf_counter() - start


def cli_rows(args):
    print(f"\nwhole CLI runs (seconds, start-up included), {args.cli_prompts} prompts a row, default "
          f"settings, free mode max_new_tokens {args.max_new_tokens}")
    header = " | ".join(f"hf {r} row{'s' * (r > 1)} | vllm {r} row{'s' * (r > 1)}" for r in args.cli_rows)
    print(f"| mode | {header} |\n| --- |" + " --- |" * (2 * len(args.cli_rows)))
    for i, mode in enumerate(args.modes):
        cells = []
        for rows in args.cli_rows:
            order = BACKENDS if i % 2 == 0 else BACKENDS[::-1]
            times = {b: cli_run(args, b, mode, rows) for b in order}
            cells += [f"{times['hf']:.0f}", f"{times['vllm']:.0f}"]
        print(f"| {mode} | " + " | ".join(cells) + " |", flush=True)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", help="Amazon 2014 files (needed without --test-file or --model)")
    p.add_argument("--test-file", help="testdata/<domain>.jsonl (default: real Beauty prompts from --data-dir)")
    p.add_argument("--model", help="model folder (default: a random Qwen2 of --size built in --work-dir)")
    p.add_argument("--size", choices=sorted(SIZES), default="tiny", help="the random model's size")
    p.add_argument("--work-dir", required=True)
    p.add_argument("--prompts", type=int, default=200, help="prompts of the throughput runs")
    p.add_argument("--repeats", type=int, default=3, help="runs per backend, alternating; medians printed")
    p.add_argument("--max-new-tokens", type=int, default=128, help="free mode: about 5 titles")
    p.add_argument("--modes", nargs="+", choices=MODES, default=MODES)
    p.add_argument("--hf-threads", type=int, help="hf: torch threads (default: torch's, as the CLI)")
    p.add_argument("--vllm-threads", type=int, help="vllm: cores the engine is bound to (default: vLLM's auto)")
    p.add_argument("--compile", action="store_true", help="vllm: compiled model")
    p.add_argument("--engine-args", default="{}", help="vllm: more vllm.LLM arguments, as JSON")
    p.add_argument("--adapter-rank", type=int, help="also time a random adapter of this rank (LoRA vs merged)")
    p.add_argument("--cli-prompts", type=int, default=300, help="prompts a row of the CLI runs (0: none)")
    p.add_argument("--cli-rows", type=int, nargs="+", default=[1, 7], help="rows per CLI run")
    p.add_argument("--skip-throughput", action="store_true", help="only the adapter rows and the CLI runs")
    args = p.parse_args(argv)
    if not args.data_dir and not (args.test_file and args.model):
        raise UserError("--data-dir is needed to build the prompts or the model")
    return args


def prepare(args):
    os.makedirs(args.work_dir, exist_ok=True)
    if not args.test_file:
        args.test_file = os.path.join(args.work_dir, "bench_test.jsonl")
        write_jsonl_atomic(args.test_file, real_prompts(args.data_dir, max(args.prompts, args.cli_prompts), tricky=0))
    if not args.model:
        args.model = os.path.join(args.work_dir, f"model-{args.size}")
        if not os.path.isfile(os.path.join(args.model, "config.json")):
            random_model(args.data_dir, args.model, args.size)
    args.test_file, args.model = os.path.abspath(args.test_file), os.path.abspath(args.model)


def main(argv=None):
    args = parse_args(argv)
    prepare(args)
    load_before = os.getloadavg()
    print(f"model {args.model}, prompts {args.test_file}")
    if not args.skip_throughput:
        throughput(args)
    if args.adapter_rank:
        adapter_rows(args)
    if args.cli_prompts:
        cli_rows(args)
    load_after = os.getloadavg()
    print(f"load average (1 min) before {load_before[0]:.2f}, after {load_after[0]:.2f} on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    run_main(main)
