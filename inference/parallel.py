"""Data parallel inference: N worker processes (one per GPU group, or per share of the CPU cores), each
taking the chunks i, i+N, ... of every job, joined in test order into the usual output.

A worker is this same command with --shard i/N; it writes `<out>.shard-i-of-N` (resumable like any
output) and its console to `<out>.shard-i-of-N.log`. Chunks are cut from the whole test file, so every
chunk is computed as a one-process run computes it: the joined file is byte-identical to one.
"""

import json
import os
import subprocess
import sys
import time

from tqdm import tqdm

from common.cli import UserError
from inference.jobs import shard_path
from inference.resume import ResumableOutput


def worker_env(args, index, count):
    """The worker's devices: its GPUs (tensor_parallel_size each), or its share of the CPU cores."""
    env = dict(os.environ)
    if args.device_resolved.startswith("cuda"):
        tp = args.tensor_parallel_size
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(index * tp + g) for g in range(tp))
        return env, []
    cores = sorted(os.sched_getaffinity(0))
    share = max(1, len(cores) // count)
    mine = [cores[(index * share + c) % len(cores)] for c in range(share)]
    if args.backend == "vllm":
        env["WEAVEREC_CORES"] = ",".join(map(str, mine))  # inference.vllm_engine.cpu_settings binds them
        return env, []
    return env, [] if args.threads else ["--threads", str(share)]


def count_lines(path):
    if not os.path.isfile(path):
        return 0
    with open(path, "rb") as f:
        return f.read().count(b"\n")


def shard_done(out, index, count):
    part = shard_path(out, index, count)
    return count_lines(part) if os.path.isfile(part) else count_lines(part + ".progress")


def launch(args, argv, jobs, count):
    log_of = [shard_path(jobs[0].out, i, count) + ".log" for i in range(count)]
    procs = []
    for i in range(count):
        env, extra = worker_env(args, i, count)
        cmd = [sys.executable, "-m", "inference.generate", *argv, "--shard", f"{i}/{count}", *extra]
        with open(log_of[i], "w", encoding="utf-8") as log:
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env))
    return procs, log_of


def wait(procs, log_of, jobs, count, total):
    bar = tqdm(total=total, unit="sample", desc=f"{count} workers", dynamic_ncols=True)
    while any(p.poll() is None for p in procs):
        done = sum(shard_done(job.out, i, count) for job in jobs for i in range(count))
        bar.update(min(done, total) - bar.n)
        time.sleep(0.5)
    bar.update(total - bar.n if all(p.returncode == 0 for p in procs) else 0)
    bar.close()
    for i, p in enumerate(procs):
        if p.returncode != 0:
            for q in procs:
                if q.poll() is None:
                    q.kill()
            with open(log_of[i], encoding="utf-8", errors="replace") as f:
                lines = f.read().splitlines()
            errors = [line for line in lines if line.startswith("error: ")]
            sys.stderr.write("\n".join(lines[-10:]) + "\n")
            raise UserError(f"data-parallel worker {i} failed: "
                            f"{errors[-1][7:] if errors else f'exit code {p.returncode}'} (log: {log_of[i]})")


def join(job, count):
    """The workers' parts of `job` into its output, in test order; the parts removed."""
    output = ResumableOutput(job.out, job.fingerprint(), len(job.examples))
    if not output.open(job.args.overwrite, job.args.replace_stale):
        return output
    for i in range(count):
        part = shard_path(job.out, i, count)
        with open(part, encoding="utf-8") as f:
            output.add([json.loads(line) for line in f])
    records = output.finish()
    for i in range(count):
        for path in (shard_path(job.out, i, count), shard_path(job.out, i, count) + ".run.json"):
            if os.path.exists(path):
                os.unlink(path)
    return records


def run_parallel(args, jobs, argv):
    count = args.data_parallel
    pending = [job for job in jobs if ResumableOutput(job.out, job.fingerprint(), len(job.examples)).open(
        args.overwrite, args.replace_stale)]
    for job in jobs:
        if job not in pending:
            print(f"{job.out} is already complete ({len(job.examples)} lines); nothing to do")
    if not pending:
        return 0
    start = time.time()
    argv = list(argv if argv is not None else sys.argv[1:])
    procs, log_of = launch(args, argv, pending, count)
    wait(procs, log_of, pending, count, sum(len(job.examples) for job in pending))
    for job in pending:
        records = join(job, count)
        print(f"wrote {job.out}: {len(records)} lines joined from {count} workers in "
              f"{time.time() - start:.1f}s (worker logs: {jobs[0].out}.shard-*-of-{count}.log)")
    return 0
