"""Time the metric stage on a large synthetic report: USERS test lines x FILES prediction files.

Writes its files to --work-dir (default: a fresh temporary folder, removed afterwards) and prints
seconds per phase. Usage: python -m benchmarks.bench_metric [--users 30000] [--files 10] [--bootstrap 1000]
"""

import argparse
import random
import shutil
import tempfile
import time
from pathlib import Path

from common.io import write_jsonl_atomic
from common.prompt import make_sample
from metric.metric import main as metric_main


def build(work, n_users, n_files, seed):
    """A test file, n_files prediction runs (hit rates rising with the file index), an items file."""
    rng = random.Random(seed)
    titles = [f"Synthetic product {i} with a realistic length title" for i in range(12000)]
    lines, outputs = [], [[] for _ in range(n_files)]
    for u in range(n_users):
        picked = rng.sample(titles, 50)
        target, cands = picked[20], picked[20:50]
        lines.append({**make_sample(picked[:20], rng.sample(cands, 30), cands[:5]), "user": f"U{u}"})
        for f in range(n_files):
            top = rng.sample(cands[1:], 5)
            if rng.random() < 0.1 + 0.03 * f:
                top[rng.randrange(5)] = target
            outputs[f].append("||".join(top))
    write_jsonl_atomic(work / "test.jsonl", lines)
    for f, outs in enumerate(outputs):
        write_jsonl_atomic(work / "result" / f"run{f}" / "output.jsonl",
                           [{"id": i, "output": o} for i, o in enumerate(outs)])
    write_jsonl_atomic(work / "items.jsonl", [{"id": i, "asin": str(i), "title": t, "train_count": i % 97}
                                              for i, t in enumerate(titles)])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=30000)
    p.add_argument("--files", type=int, default=10)
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--work-dir", help="keep the files here (default: a temporary folder)")
    args = p.parse_args(argv)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="metric-bench-"))
    try:
        t0 = time.perf_counter()
        build(work, args.users, args.files, seed=0)
        t1, c1 = time.perf_counter(), time.process_time()
        metric_main(["--test-file", str(work / "test.jsonl"), "--pred-dir", str(work / "result"),
                     "--items", str(work / "items.jsonl"), "--out-dir", str(work / "report"),
                     "--bootstrap", str(args.bootstrap)])
        t2, c2 = time.perf_counter(), time.process_time()
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    print(f"bench_metric: {args.users} users x {args.files} files (+2 baselines), "
          f"{args.bootstrap} resamples: build {t1 - t0:.1f}s, metric stage {t2 - t1:.1f}s wall, "
          f"{c2 - c1:.1f}s CPU")


if __name__ == "__main__":
    main()
