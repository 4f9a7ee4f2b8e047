"""bench_7b's stage runner and table: runs one command as a user would, timed, its console in a log file,
the GPU sampled meanwhile; collects one row per stage and writes the table as markdown and json.

Peak GPU memory and the GPU's busy share come from `nvidia-smi` sampled every 0.2 s in a thread (memory
used on GPU 0 by every process, so the peak of the stage's own processes; utilisation averaged over the
stage). Peak RSS is the largest process of the stage's tree (os.wait4's ru_maxrss, which covers the
descendants the child waited for). A stage gets at most the time left in the budget; past it, its
process group is killed and the row says so.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time

from common.io import write_json_atomic, write_text_atomic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# inference.generate's summary line: "wrote ...: model ready in Xs, Ys, Z samples/s (first batch of B in Ts,
# then W samples/s), ..." (the part in brackets: hf, more than one batch)
WROTE = re.compile(r"^wrote .*model ready in ([\d.]+)s, [\d.]+s, ([\d.]+) samples/s"
                   r"(?: \(first batch of \d+ in ([\d.]+)s, then ([\d.]+) samples/s\))?", re.MULTILINE)
COLUMNS = [("stage", "stage"), ("seconds", "seconds"), ("samples_per_s", "samples/s"),
           ("later_per_s", "samples/s after batch 1"), ("first_batch_s", "batch 1 s"), ("startup_s", "start-up s"), ("gpu_peak_gib", "peak GPU GiB"), ("gpu_busy_pct", "GPU busy %"),
           ("rss_peak_gib", "peak RSS GiB"), ("status", "status"), ("note", "note")]


class GpuSampler:
    """memory.used (MiB) and utilization.gpu (%) of GPU 0, polled every `interval` s in a thread."""

    QUERY = ("nvidia-smi", "-i", "0", "--query-gpu=memory.used,utilization.gpu", "--format=csv,noheader,nounits")

    def __init__(self, interval=0.2):
        self.interval, self.samples = interval, []
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    @staticmethod
    def available():
        return shutil.which("nvidia-smi") is not None

    def _loop(self):
        while not self.stop_event.is_set():
            try:
                out = subprocess.run(self.QUERY, capture_output=True, text=True, timeout=5, check=False).stdout
                mem, util = (float(x) for x in out.strip().splitlines()[0].split(","))
                self.samples.append((mem, util))
            except (ValueError, IndexError, OSError, subprocess.TimeoutExpired):
                pass  # one missed sample
            self.stop_event.wait(self.interval)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_event.set()
        self.thread.join()

    def summary(self):
        """(peak memory GiB, mean utilisation %), or (None, None) without samples."""
        if not self.samples:
            return None, None
        return max(m for m, _ in self.samples) / 1024, sum(u for _, u in self.samples) / len(self.samples)


class Bench:
    """Runs the stages in order within a time budget; keeps the rows and rewrites the table after each."""

    def __init__(self, out_dir, budget_s=None, gpu=None):
        self.out_dir, self.budget_s = out_dir, budget_s
        self.gpu = GpuSampler.available() if gpu is None else gpu
        self.start, self.rows, self.out_of_time = time.time(), [], False
        self.meta = {}  # lines above the table: what was run, where
        os.makedirs(os.path.join(out_dir, "logs"), exist_ok=True)

    def time_left(self):
        return None if self.budget_s is None else self.budget_s - (time.time() - self.start)

    def skip(self, name, why):
        print(f"[bench_7b] {name}: skipped ({why})", flush=True)
        return self.add({"stage": name, "status": "skipped", "note": why})

    def run(self, name, cmd, env=None, needs=(), note=""):
        """Run `cmd` (from the repository root) as stage `name`; returns its row (with the log's text)."""
        missing = [p for p in needs if not os.path.exists(p)]
        left = self.time_left()
        if self.out_of_time or (left is not None and left < 5):
            self.out_of_time = True
            return self.skip(name, "out of time (--budget-s)")
        if missing:
            return self.skip(name, f"input missing: {missing[0]}")
        print(f"[bench_7b] {name}: {' '.join(map(str, cmd))}", flush=True)
        log = os.path.join(self.out_dir, "logs", f"{name}.log")
        row = {"stage": name, "note": note}
        row.update(self._timed(cmd, env, log, left))
        with open(log, encoding="utf-8", errors="replace") as f:
            text = f.read()
        if row["status"] != "ok":
            print("".join(text.splitlines(True)[-15:]), end="", flush=True)
        return self.add(row, text)

    def _timed(self, cmd, env, log, timeout):
        full_env = dict(os.environ, **(env or {}))
        gpu = GpuSampler() if self.gpu else _NoSampler()
        with open(log, "w", encoding="utf-8") as out, gpu:
            start = time.time()
            proc = subprocess.Popen([str(c) for c in cmd], cwd=REPO, env=full_env, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            status, usage = _wait(proc, None if timeout is None else start + timeout)
            seconds = time.time() - start
        peak, busy = gpu.summary()
        if status is None:
            os.killpg(proc.pid, signal.SIGKILL)  # past the budget: the whole stage's process group
            proc.wait()
            self.out_of_time = True
            state = "killed: out of time (--budget-s)"
        else:
            state = "ok" if status == 0 else f"failed (exit {status})"
        return {"seconds": seconds, "gpu_peak_gib": peak, "gpu_busy_pct": busy, "status": state,
                "rss_peak_gib": usage.ru_maxrss / 2**20 if usage else None}

    def add(self, row, text=""):
        self.rows.append(row)
        print(f"[bench_7b] {format_row(row)}", flush=True)
        self.write()
        row["log"] = text
        return row

    def write(self):
        rows = [{k: r.get(k) for k, _ in COLUMNS} for r in self.rows]
        write_json_atomic(os.path.join(self.out_dir, "bench_7b.json"),
                          {"rows": rows, "seconds": time.time() - self.start, **self.meta})
        write_text_atomic(os.path.join(self.out_dir, "bench_7b.md"), markdown(rows, self.meta))


class _NoSampler:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def summary(self):
        return None, None


def _wait(proc, deadline):
    """(exit status, rusage) once the child ends, or (None, None) at the deadline."""
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, usage
        if deadline is not None and time.time() > deadline:
            return None, None
        time.sleep(0.05)


def parse_generate(text):
    """From inference.generate's "wrote" line: {startup_s, samples_per_s, first_batch_s, later_per_s} (the
    generation rate with the first batch, where the first kernels' cost falls, left out), None where absent."""
    m = WROTE.search(text or "")
    values = [float(v) if v is not None else None for v in m.groups()] if m else [None] * 4
    return dict(zip(("startup_s", "samples_per_s", "first_batch_s", "later_per_s"), values))


def cell(value, digits=1):
    if value is None:
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def format_row(row):
    return " | ".join(f"{label} {cell(row.get(key), 2 if key == 'rss_peak_gib' else 1)}"
                      for key, label in COLUMNS[1:] if row.get(key) not in (None, ""))


def markdown(rows, meta):
    head = [f"# bench_7b: {meta.get('title', '')}", "", *(f"- {k}: {v}" for k, v in meta.items() if k != "title"), ""]
    lines = ["| " + " | ".join(label for _, label in COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    for r in rows:
        lines.append("| " + " | ".join(cell(r.get(k), 2 if k == "rss_peak_gib" else 1) for k, _ in COLUMNS) + " |")
    return "\n".join(head + lines) + "\n"


def read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}
