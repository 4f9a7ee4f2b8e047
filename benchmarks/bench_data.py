"""Benchmark: raw Amazon files -> traindata/ + testdata/ for one domain (default Beauty, all defaults).

Prints wall seconds and peak resident memory of the whole run (the original implementation needs
about 9 minutes for Beauty on one core). Usage:
    python -m benchmarks.bench_data --raw-dir ../shared/data/amazon2014 [--domain beauty] [--work-dir DIR]
"""

import argparse
import os
import resource
import shutil
import tempfile
import time

from common.cli import run_main
from data_process import process


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--raw-dir", required=True)
    p.add_argument("--domain", default="beauty")
    p.add_argument("--work-dir", default=None, help="where outputs go (default: a temporary folder, removed)")
    p.add_argument("--repeat", type=int, default=1)
    args = p.parse_args(argv)
    work = args.work_dir or tempfile.mkdtemp(prefix="bench_data.")
    try:
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            process.main(["--raw-dir", args.raw_dir, "--domain", args.domain,
                          "--train-dir", os.path.join(work, "traindata"),
                          "--test-dir", os.path.join(work, "testdata")])
            times.append(time.perf_counter() - start)
        sizes = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(work) for f in fs)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"bench_data {args.domain}: wall {min(times):.2f}s (best of {len(times)}; all: "
          f"{', '.join(f'{t:.2f}' for t in times)}), peak RSS {peak_mb:.0f} MB, "
          f"outputs {sizes / 1e6:.0f} MB, {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    run_main(main)
