"""One stage CLI run as a child process, timed: wall seconds, its peak RSS and the summary lines it printed."""

import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_module(module, args, summary_prefixes):
    """(wall seconds, peak RSS in MB by os.wait4, the stdout lines starting with summary_prefixes) of
    `python -m module *args`; SystemExit naming the command if it fails. Its stdout goes to a temporary file
    (a pipe read only after wait4 would block a child that prints more than the pipe holds)."""
    with tempfile.TemporaryFile(mode="w+") as out:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=REPO, stdout=out,
                                stderr=subprocess.DEVNULL, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        out.seek(0)
        lines = [line for line in out.read().splitlines() if line.startswith(tuple(summary_prefixes))]
    if status != 0:
        raise SystemExit(f"{module} failed ({' '.join(args)}); rerun it by hand to see why")
    return wall, usage.ru_maxrss / 1024, lines
