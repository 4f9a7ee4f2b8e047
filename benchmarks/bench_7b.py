"""Time every stage at Qwen2-7B-Instruct's shape: reads a tokenizer and Amazon 2014 Sports files, writes a table.

The table (--out-dir: bench_7b.md, bench_7b.json, logs/<stage>.log, diag_profile_*.txt) holds per stage its
seconds, samples/s, model start-up, peak GPU memory, GPU busy share and peak RSS. Prints, asserts nothing.

Each stage is the project's own entry point run as a subprocess, as a user runs it, in this order (STAGES):
a random bf16 checkpoint with Qwen2-7B-Instruct's published config and three random rank-16 adapters
(benchmarks/bench_7b_make.py), scripts/make_data.sh (real Sports samples, 20-item histories), the stacked
merge (merge.merge_lora), inference.generate in its three modes at the largest batch size (model start-up
apart from the generation rate, the first batch apart from the rest), merge.learn_weights
(likelihood, a few steps), on a GPU a diagnostic (a tiny quickstart-sized model in float32 against bfloat16,
with each --sdpa-backends choice where inference.generate has it, plus torch.profiler tables), constrained mode
at the largest batch size once more with the per-row reference masks (--constraint-masks python) and with
--compile (a static KV cache, compiled on a GPU), inference at the smaller batch sizes, then
scripts/preflight.sh, scripts/train_lora.sh with scripts/train_configs/qwen2_7b_lora.yaml (a few steps) and the
full merge. --small runs the same stages on a 2-layer model with the real vocabulary, on CPU in minutes
(tests/test_bench_7b.py). --budget-s skips what no longer fits and kills a stage that runs past it: the last
stages are the first cut.

On the lent GPU machine: bash scripts/gpu_bench.sh (docs/gpu.md). Here:
    .venv/bin/python -m benchmarks.bench_7b --small --out-dir /tmp/b7/out --work-dir /tmp/b7/work \\
        --raw-dir ../shared/data/amazon2014 --tokenizer ../shared/models/qwen2-7b-instruct-tokenizer
"""

import argparse
import datetime
import os
import subprocess
import sys

from benchmarks.bench_7b_run import (
    REPO,
    Bench,
    GpuSampler,
    markdown,
    parse_generate,
    read_json,
)
from common.cli import UserError, run_main

CONFIG = "scripts/train_configs/qwen2_7b_lora.yaml"
DOMAIN = "sports"
# sizes per shape: the 7B run fits one 10-minute device call (docs/gpu.md); --small fits a CPU test
PRESETS = {
    "7b": {"prompts": 128, "train_samples": 300, "train_steps": 4, "batch_sizes": "16,64", "max_new_tokens": 32,
           "learn_steps": 3, "learn_prompts": 8, "diag_prompts": 100},
    "small": {"prompts": 4, "train_samples": 16, "train_steps": 2, "batch_sizes": "2,4", "max_new_tokens": 4,
              "learn_steps": 1, "learn_prompts": 4, "diag_prompts": 4},
}
# --small trains one sample at a time: logits over 152,064 tokens for 2 x 16 samples would take GBs on a CPU
SMALL_TRAIN_ARGS = "per_device_train_batch_size=1 gradient_accumulation_steps=2 per_device_eval_batch_size=1 " \
                   "preprocessing_num_workers=1"
# in this order; under --budget-s the last ones are the first cut: what the targets need first (inference at the
# largest batch, learn_weights' memory, the bf16 diagnostic), then what each change gains, inference at the smaller
# batch sizes, and the stages the H200 already measured at d65957c (preflight, training) and the full merge
STAGES = ["checkpoint", "data", "merge_stacked", "generate", "learn_weights", "diag", "masks", "compile",
          "generate_smaller", "preflight", "train", "merge_full"]


class Paths:
    def __init__(self, work):
        self.work = work
        self.models = os.path.join(work, "models")
        self.base = os.path.join(self.models, "base")
        self.adapters = [os.path.join(self.models, "adapters", n) for n in ("target", "source1", "source2")]
        self.tiny = os.path.join(self.models, "tiny")
        self.traindata, self.testdata = os.path.join(work, "traindata"), os.path.join(work, "testdata")
        self.test_file = os.path.join(self.testdata, f"{DOMAIN}.jsonl")
        self.valid_file = os.path.join(self.testdata, f"{DOMAIN}_valid.jsonl")
        self.save = os.path.join(work, "save")
        self.stacked, self.full = os.path.join(work, "merged", "stacked"), os.path.join(work, "merged", "full")
        self.result, self.learned = os.path.join(work, "result"), os.path.join(work, "learned")


def stage_checkpoint(bench, args, paths):
    cmd = [sys.executable, "-m", "benchmarks.bench_7b_make", "base", "--tokenizer", args.tokenizer,
           "--out-dir", paths.models] + (["--small"] if args.small else [])
    bench.run("checkpoint", cmd, note="random bf16 weights + 3 rank-16 adapters")


def stage_data(bench, args, paths):
    env = {"RAW_DIR": args.raw_dir, "DATA_DIR": paths.traindata, "TEST_DIR": paths.testdata, "DOMAINS": DOMAIN,
           "TRAIN_SAMPLES": str(args.train_samples), "VALID_SAMPLES": "0",
           "TEST_USERS": str(max(args.prompts, args.diag_prompts)), "HISTORY": str(args.history),
           "PYTHON": args.train_python, "ANSWER_ITEMS": "5", "TITLE_WORDS": "0", "SEED": "42", "EXTRA_ARGS": ""}
    bench.run("data", ["bash", "scripts/make_data.sh"], env,
              note=f"{args.train_samples} train samples, {env['TEST_USERS']} test users, {args.history}-item history")


def stage_preflight(bench, args, paths):
    env = {"MODEL": paths.base, "CONFIG": CONFIG, "SAVE_DIR": paths.save, "MODULES": "3", "NPROC": "1",
           "BACKEND": "hf", "BATCH_SIZE": str(max(args.batch_sizes)), "MAX_NEW_TOKENS": str(args.max_new_tokens),
           "PYTHON": args.train_python, "VENV": venv_of(args.train_python)}
    row = bench.run("preflight", ["bash", "scripts/preflight.sh"], env, needs=[paths.base])
    if row.get("log"):
        found = [" ".join(line.split()) for line in row["log"].splitlines() if line.startswith(("FAIL", "warn"))]
        row["note"] = "; ".join(found)[:400] or "every check ok"
        if row["status"] == "failed (exit 1)" and any(f.startswith("FAIL") for f in found):
            row["status"] = "ok, a check FAILs"  # the preflight's finding, not a failure of the benchmark
        bench.write()


def stage_train(bench, args, paths):
    steps, every = args.train_steps, max(1, args.train_steps // 2)
    extra = f"max_steps={steps} eval_steps={every} save_steps={every} logging_steps=1"
    env = {"MODEL": paths.base, "CONFIG": CONFIG, "DATA_DIR": paths.traindata, "SAVE_DIR": paths.save,
           "PYTHON": args.train_python, "SKIP_EXISTING": "0", "NPROC": "1", "NNODES": "1", "NODE_RANK": "0",
           "PRECISION": "auto", "DRY_RUN": "0",
           "TRAIN_ARGS": f"{extra} {SMALL_TRAIN_ARGS}" if args.small else extra}
    row = bench.run("train", ["bash", "scripts/train_lora.sh", DOMAIN], env,
                    needs=[paths.base, os.path.join(paths.traindata, "dataset_info.json")],
                    note=f"{steps} steps, eval and save every {every}")
    results = read_json(os.path.join(paths.save, DOMAIN, "train_results.json"))
    row["samples_per_s"] = results.get("train_samples_per_second")


def stage_merge(bench, args, paths, output):
    out = paths.stacked if output == "stacked" else paths.full
    cmd = [sys.executable, "-m", "merge.merge_lora", "--adapters", *paths.adapters, "--out", out,
           "--weights", "1", "0.5", "0.2", "--output", output]
    if output == "full":
        cmd += ["--base-model", paths.base]
    bench.run(f"merge_{output}", cmd, needs=[*paths.adapters, paths.base], note="3 adapters, weaverec")


def generate_cmd(args, test_file, model, out, mode, batch_size, limit, *extra):
    return [sys.executable, "-m", "inference.generate", "--test-file", test_file, "--base-model", model,
            "--out", out, "--mode", mode, "--backend", "hf", "--batch-size", str(batch_size),
            "--limit", str(limit), "--max-new-tokens", str(args.max_new_tokens), "--overwrite", *extra]


def timed_generate(bench, name, cmd, needs, note):
    row = bench.run(name, cmd, needs=needs, note=note)
    row.update(parse_generate(row.get("log")))
    bench.write()
    return row


def split_sizes(batch_sizes):
    """([the largest batch size]: the targets' setting, run first; the others, largest first: run late)."""
    largest = max(batch_sizes)
    return [largest], sorted(set(batch_sizes) - {largest}, reverse=True)


def stage_generate(bench, args, paths, sizes):
    for bs in sizes:
        for mode in ("score", "constrained", "free"):
            n = min(args.prompts, 2 * bs)
            out = os.path.join(paths.result, f"{mode}_b{bs}", "output.jsonl")
            cmd = generate_cmd(args, paths.test_file, paths.base, out, mode, bs, n, "--adapter", paths.stacked)
            tokens = f", {args.max_new_tokens} new tokens" if mode == "free" else ""
            timed_generate(bench, f"generate_{mode}_b{bs}", cmd, [paths.stacked, paths.test_file],
                           f"{n} prompts at batch {bs}, stacked adapter{tokens}")


def stage_masks(bench, args, paths):
    """What the tensor masks gain: constrained at the largest batch size again, with the per-row reference
    automaton (after the diagnostic: under a tight budget this row is cut before it)."""
    if not has_option("--constraint-masks"):
        return bench.skip("masks", "inference.generate has no --constraint-masks")
    bs = args.batch_sizes[-1]
    n = min(args.prompts, 2 * bs)
    out = os.path.join(paths.result, f"constrained_b{bs}_python-masks", "output.jsonl")
    cmd = generate_cmd(args, paths.test_file, paths.base, out, "constrained", bs, n, "--adapter", paths.stacked,
                       "--constraint-masks", "python")
    timed_generate(bench, f"generate_constrained_b{bs}_python-masks", cmd, [paths.stacked, paths.test_file],
                   f"{n} prompts at batch {bs}, stacked adapter, --constraint-masks python")


def stage_compile(bench, args, paths):
    """What --compile gains (transformers' static KV cache, its decoding step compiled by torch.compile on a
    GPU): constrained mode at the largest batch size again; compiling is paid inside this run."""
    bs = args.batch_sizes[-1]
    n = min(args.prompts, 2 * bs)
    out = os.path.join(paths.result, f"constrained_b{bs}_compile", "output.jsonl")
    cmd = generate_cmd(args, paths.test_file, paths.base, out, "constrained", bs, n, "--adapter", paths.stacked,
                       "--compile")
    timed_generate(bench, f"generate_constrained_b{bs}_compile", cmd, [paths.stacked, paths.test_file],
                   f"{n} prompts at batch {bs}, stacked adapter, --compile (static KV cache)")


def has_option(option):
    """Whether inference.generate offers `option` (the benchmark also runs on older commits)."""
    text = subprocess.run([sys.executable, "-m", "inference.generate", "--help"], cwd=REPO, capture_output=True,
                          text=True, check=False).stdout
    return option in text


def sdpa_choices():
    """The --sdpa-backends values inference.generate offers, or [None] where it has no such option."""
    return ["auto", "torch"] if has_option("--sdpa-backends") else [None]


def stage_diag(bench, args, paths):
    """Tiny model, float32 against bfloat16, per --sdpa-backends choice; then profiler tables."""
    items = os.path.join(paths.traindata, f"{DOMAIN}.items.jsonl")
    bench.run("diag_tiny_model", [sys.executable, "-m", "benchmarks.bench_7b_make", "tiny", "--items", items,
                                  "--out", paths.tiny], needs=[items])
    device = "cuda" if bench.gpu else "cpu"
    n = args.diag_prompts
    for sdpa in sdpa_choices():
        flag = ["--sdpa-backends", sdpa] if sdpa else []
        for mode in args.diag_modes.split(","):
            for dtype in ("float32", "bfloat16"):
                if dtype == "float32" and sdpa == "torch":
                    continue  # float32 attention never runs on cuDNN: the auto row's kernels (budget kept)
                name = f"diag_{mode}_{dtype}" + (f"_sdpa-{sdpa}" if sdpa else "")
                out = os.path.join(paths.result, name, "output.jsonl")
                cmd = generate_cmd(args, paths.test_file, paths.tiny, out, mode, 32, n, "--device", device,
                                   "--dtype", dtype, *flag)
                timed_generate(bench, name, cmd, [paths.tiny, paths.test_file], f"tiny model, {n} prompts, {device}")
        profile(bench, args, paths, device, "bfloat16", sdpa)
    if "constrained" in args.diag_modes.split(",") and has_option("--constraint-masks"):
        # the per-row reference automaton beside the float32 row above: a small model's step is short, so the
        # masks' share of it is large
        name = "diag_constrained_float32_python-masks"
        out = os.path.join(paths.result, name, "output.jsonl")
        cmd = generate_cmd(args, paths.test_file, paths.tiny, out, "constrained", 32, n, "--device", device,
                           "--dtype", "float32", "--constraint-masks", "python")
        timed_generate(bench, name, cmd, [paths.tiny, paths.test_file], f"tiny model, {n} prompts, {device}")
    profile(bench, args, paths, device, "float32", None)


def profile(bench, args, paths, device, dtype, sdpa):
    name = f"diag_profile_{dtype}" + (f"_sdpa-{sdpa}" if sdpa else "")
    cmd = [sys.executable, "-m", "benchmarks.bench_7b_profile", "--model", paths.tiny, "--test-file",
           paths.test_file, "--out", os.path.join(args.out_dir, f"{name}.txt"), "--device", device,
           "--dtype", dtype, "--mode", "score", "--prompts", str(min(8, args.diag_prompts))]
    bench.run(name, cmd + (["--sdpa-backends", sdpa] if sdpa else []), needs=[paths.tiny, paths.test_file],
              note="torch.profiler, score mode: top ops in " + f"{name}.txt")


def stage_learn_weights(bench, args, paths):
    n = args.learn_prompts
    cmd = [sys.executable, "-m", "merge.learn_weights", "--base-model", paths.base, "--adapters", *paths.adapters,
           "--objective", "likelihood", "--prompts", paths.valid_file, "--out-dir", paths.learned,
           "--steps", str(args.learn_steps), "--batch-size", "2", "--limit", str(n), "--holdout", "0.25",
           "--eval-every", str(args.learn_steps), "--no-progress"]
    bench.run("learn_weights", cmd, needs=[*paths.adapters, paths.valid_file],
              note=f"likelihood, 3 adapters, {args.learn_steps} steps of 2 prompts ({n} prompts, 1/4 held out)")


def venv_of(python):
    """The environment folder of a bin/python (what scripts/preflight.sh's VENV names)."""
    folder = os.path.dirname(os.path.abspath(python))
    return os.path.dirname(folder) if os.path.basename(folder) == "bin" else folder


def describe(args):
    device = "CPU"
    if GpuSampler.available():
        out = subprocess.run(["nvidia-smi", "-i", "0", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, check=False).stdout.strip()
        device = out or "a GPU (nvidia-smi gave no name)"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                check=False).stdout.strip() or "unknown (no .git)"
    except OSError:
        commit = "unknown (no git)"
    import torch
    return {"title": "Qwen2-7B-Instruct shape, random bf16 weights" if not args.small
            else "--small (2 layers, hidden 128, real vocabulary), random bf16 weights",
            "device": device, "date": datetime.date.today().isoformat(), "project commit": commit,
            "torch": torch.__version__, "python (inference, merge)": sys.executable,
            "python (data, preflight, training)": args.train_python, "work dir": args.work_dir}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out-dir", required=True, help="the table, logs and profiles (on the GPU machine: $OUT)")
    p.add_argument("--work-dir", required=True, help="models, data, adapters, outputs (~30 GB at 7B)")
    p.add_argument("--raw-dir", required=True, help="folder with the Amazon 2014 Sports files")
    p.add_argument("--tokenizer", required=True, help="Qwen2-7B-Instruct tokenizer folder")
    p.add_argument("--small", action="store_true", help="2 layers, hidden 128, the real vocabulary (CPU)")
    p.add_argument("--train-python", default=sys.executable,
                   help="Python with LLaMA-Factory, llamafactory-cli beside it (default: this one)")
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, of {','.join(STAGES)}")
    p.add_argument("--diag", choices=["auto", "on", "off"], default="auto",
                   help="the tiny-model diagnostic (auto: on a GPU only; on: on the CPU too)")
    p.add_argument("--diag-modes", default="score,constrained", help="inference modes the diagnostic times")
    p.add_argument("--history", type=int, default=20, help="most recent items in a prompt (make_data.sh HISTORY)")
    p.add_argument("--budget-s", type=float, help="stop starting stages (and kill a running one) after this")
    for name, value in PRESETS["7b"].items():
        p.add_argument("--" + name.replace("_", "-"), type=type(value), help=f"default {value} (--small: "
                       f"{PRESETS['small'][name]})")
    args = p.parse_args(argv)
    for name, value in PRESETS["small" if args.small else "7b"].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    args.stages = args.stages.split(",")
    unknown = sorted(set(args.stages) - set(STAGES))
    if unknown:
        raise UserError(f"unknown stage(s) {', '.join(unknown)} (known: {', '.join(STAGES)})")
    args.out_dir, args.work_dir = os.path.abspath(args.out_dir), os.path.abspath(args.work_dir)
    args.raw_dir, args.tokenizer = os.path.abspath(args.raw_dir), os.path.abspath(args.tokenizer)
    return args


def main(argv=None):
    args = parse_args(argv)
    bench = Bench(args.out_dir, args.budget_s)
    bench.meta = describe(args)
    print(f"[bench_7b] {bench.meta['title']} on {bench.meta['device']}; table in {args.out_dir}", flush=True)
    paths = Paths(args.work_dir)
    run = {"checkpoint": stage_checkpoint, "data": stage_data, "preflight": stage_preflight, "train": stage_train,
           "merge_stacked": lambda *a: stage_merge(*a, "stacked"),
           "generate": lambda *a: stage_generate(*a, split_sizes(args.batch_sizes)[0]),
           "generate_smaller": lambda *a: stage_generate(*a, split_sizes(args.batch_sizes)[1]),
           "diag": stage_diag, "learn_weights": stage_learn_weights, "masks": stage_masks,
           "compile": stage_compile,
           "merge_full": lambda *a: stage_merge(*a, "full")}
    for name in STAGES:
        if name not in args.stages:
            continue
        if name == "diag" and (args.diag == "off" or (args.diag == "auto" and not bench.gpu)):
            bench.skip("diag", "--diag off" if args.diag == "off" else "no GPU (--diag on runs it on the CPU)")
            continue
        run[name](bench, args, paths)
    bench.write()
    print(markdown(bench.rows, bench.meta))
    print(f"wrote {args.out_dir}/bench_7b.md and bench_7b.json: {len(bench.rows)} rows, "
          f"{sum(r.get('status').startswith('ok') for r in bench.rows)} ok")
    return 0 if all(r.get("status").startswith(("ok", "skipped")) for r in bench.rows) else 1


if __name__ == "__main__":
    run_main(main)
