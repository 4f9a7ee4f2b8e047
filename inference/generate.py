"""Predict the top-5 titles for every test line: reads a test jsonl and a model (+ adapters), writes output.jsonl.

Line i of the output answers test line i: {"id": i, "output": "t1||t2||t3||t4||t5"} (score mode adds
"ranking" and "scores", all candidates best first). Modes: free (plain greedy generation),
constrained (only 5 distinct candidate titles can be produced), score (candidates ranked by
likelihood). Backends: hf (transformers, the reference) and vllm (its own environment, .venv-vllm).
Interrupted runs resume with the same arguments (inference/resume.py); --data-parallel N splits the
test lines between N processes (inference/parallel.py); --jobs runs several outputs on one engine.

    python -m inference.generate --test-file testdata/beauty.jsonl --base-model models/tiny-qwen2 \\
        --adapter save/merged/beauty --out result/beauty/output.jsonl --mode constrained
"""

import argparse
import gc
import importlib.util
import sys
import time

from tqdm import tqdm

from common.cli import UserError, run_main
from inference import jobs as joblist
from inference.examples import DEFAULT_BATCH_SIZE, validity
from inference.loading import SDPA_BACKENDS
from inference.memory import peak_text
from inference.records import SCORE_RULES

# --backend auto: the faster backend per mode (benchmarks/bench_inference.py, docs/inference.md), when the
# running environment has vLLM; on CPU also by size (inference/jobs.py: AUTO_VLLM_MIN_PROMPTS)
AUTO_BACKEND = {"free": "vllm", "constrained": "vllm", "score": "hf"}


def batch_size_arg(text):
    """--batch-size: "auto" or a whole number, at least 1."""
    if text == "auto":
        return text
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"auto or a whole number >= 1, not {text!r}")
    return int(text)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--test-file")
    p.add_argument("--base-model", help="HF model folder (base or full merged model)")
    p.add_argument("--adapter", nargs="+", action="extend", default=[],
                   help="PEFT adapter folder(s); several are summed into the weights")
    p.add_argument("--tokenizer", help="tokenizer folder (default: the base model)")
    p.add_argument("--out", help="result/<run>/output.jsonl")
    p.add_argument("--jobs", help="jsonl of runs sharing one engine: {test_file, base_model, adapter, out}")
    p.add_argument("--mode", choices=["free", "constrained", "score"], default="free")
    p.add_argument("--backend", choices=["auto", "hf", "vllm"], default="hf",
                   help="auto: vllm for free/constrained where installed (on CPU from 2,000 prompts a call), else hf")
    p.add_argument("--batch-size", type=batch_size_arg, default="auto",
                   help=f"hf: prompts run at once (auto: {DEFAULT_BATCH_SIZE} on CPU; on a GPU the most that fit its "
                        "free memory at the longest prompts; out of memory, a batch is halved)")
    p.add_argument("--sdpa-backends", choices=SDPA_BACKENDS, default="auto",
                   help="hf: attention kernels (auto: all but cuDNN's, which plans anew for every shape; "
                        "torch: torch's own choice)")
    p.add_argument("--constraint-masks", choices=["tensor", "python"], default="tensor",
                   help="hf, constrained: the candidate automata of a batch as tensors on the model's device "
                        "(tensor), or the per-row reference on the host (python); the same outputs")
    p.add_argument("--max-new-tokens", type=int, default=800, help="free mode (constrained sizes its own)")
    p.add_argument("--score-norm", choices=list(SCORE_RULES), default="sum",
                   help="score mode: total (sum) or per-token (mean) log-likelihood, or calibrated: minus "
                        "the log-likelihood after the same prompt with an empty history (inference/records.py)")
    p.add_argument("--device", default="auto", help="hf: auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                   help="auto: bfloat16 on a GPU, float32 on CPU")
    p.add_argument("--threads", type=int, help="CPU threads (hf: torch's; vllm: cores its threads are bound to)")
    p.add_argument("--data-parallel", type=int, default=1, help="processes, each on part of the test lines")
    p.add_argument("--shard", help=argparse.SUPPRESS)  # i/N: one data-parallel worker (inference/parallel.py)
    p.add_argument("--tensor-parallel-size", type=int, default=1, help="vllm: GPUs per engine")
    p.add_argument("--vllm-adapters", choices=["auto", "lora", "merge"], default="auto",
                   help="vllm: adapters as LoRA requests, or merged into the served weights "
                        "(auto: lora on GPUs, merge on CPU)")
    p.add_argument("--max-lora-rank", type=int, help="vllm lora: default the smallest size that fits")
    p.add_argument("--compile", action="store_true",
                   help="vllm: compile the model (slower start, faster decoding; the default on GPUs); hf: a "
                        "static KV cache, the decoding step compiled by transformers on a GPU")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--seed", type=int, default=0, help="used only when sampling (temperature > 0)")
    p.add_argument("--limit", type=int, help="only the first N test lines")
    p.add_argument("--overwrite", action="store_true", help="replace an output from other arguments")
    p.add_argument("--replace-stale", action="store_true",
                   help="replace an output only when its arguments or inputs changed (else resume or skip)")
    args = p.parse_args(argv)
    for name in ("max_new_tokens", "tensor_parallel_size", "limit", "threads", "data_parallel"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    if args.temperature < 0:
        raise UserError("--temperature must be 0 (greedy) or positive")
    if args.temperature > 0 and args.mode != "free":
        raise UserError("--temperature applies to --mode free only")
    if not args.jobs and not (args.test_file and args.base_model and args.out):
        raise UserError("--test-file, --base-model and --out are needed (or --jobs)")
    has_vllm = importlib.util.find_spec("vllm") is not None
    if args.backend == "vllm" and not has_vllm:  # before anything is read or loaded
        from inference.vllm_engine import import_vllm
        import_vllm()
    args.auto = args.backend == "auto"
    if args.auto:
        args.backend = AUTO_BACKEND[args.mode] if has_vllm else "hf"
    return args


def run_job(job, runner, chunks, output, console):
    """Predict every chunk not done yet; returns the records of `output` once all are done."""
    # leave=False: the "wrote" line that follows sums the bar up
    bar = tqdm(total=len(output.ids), initial=len(output.done), unit="sample", desc=job.name,
               file=console[1] if console else None, dynamic_ncols=True, leave=False)
    try:
        for chunk in chunks:
            todo = [ex for ex in chunk if ex["id"] not in output.done]
            if todo:
                output.add(runner(chunk))
                bar.update(len(todo))
    finally:
        bar.close()  # an error line then starts a line of its own
    return output.finish()


def report(job, records, resumed, loaded, seconds, runner, console=None):
    item_rate, full_rate = validity(job.examples, records)
    batch = getattr(runner, "batch_text", "")
    first, done = getattr(runner, "first_batch", None), len(records) - resumed
    if first and done > first[0]:  # hf: a once-a-run cost (first kernels) falls in the first batch
        later = (done - first[0]) / max(seconds - first[1], 1e-9)
        first = f" (first batch of {first[0]} in {first[1]:.1f}s, then {later:.2f} samples/s)"
    else:
        first = ""
    print(f"wrote {job.out}: {len(records)} lines ({resumed} resumed), mode {job.args.mode}, backend "
          f"{job.args.backend}{batch}, model ready in {loaded:.1f}s, {seconds:.1f}s, "
          f"{done / max(seconds, 1e-9):.2f} samples/s{first}, "
          f"{peak_text(job.args.device_resolved)}; "
          f"valid titles {item_rate:.1%}, answers of 5 distinct candidates {full_rate:.1%}",
          file=console[0] if console else sys.stdout, flush=True)


def run_all(args, jobs, console):
    """Every job on one backend session (one vLLM engine, or one HF model at a time)."""
    from inference.session import Session

    session = Session(args, jobs)
    for job in jobs:
        if job.output is None:
            continue
        start = time.time()
        runner = session.runner(job)
        gc.freeze()  # what is loaded stays; collections no longer rescan it
        loaded = time.time()
        resumed = len(job.output.done)
        records = run_job(job, runner, job.chunks, job.output, console)
        report(job, records, resumed, loaded - start, time.time() - loaded, runner, console)
    session.close()


def main(argv=None):
    args = parse_args(argv)
    jobs = joblist.make_jobs(args)
    if args.data_parallel > 1 and not args.shard:
        from inference.parallel import run_parallel
        return run_parallel(args, jobs, argv)
    pending = [job for job in jobs if job.open()]
    for job in jobs:
        if job.output is None:
            print(f"{job.out} is already complete ({len(job.examples)} lines); nothing to do")
    if not pending:
        return 0
    if args.backend == "vllm":
        from inference.session import vllm_console
        with vllm_console(args, pending) as console:
            run_all(args, pending, console)
    else:
        run_all(args, pending, None)
    return 0


if __name__ == "__main__":
    run_main(main)
