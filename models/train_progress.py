"""Show one progress bar for a LoRA run: reads LLaMA-Factory's trainer_log.jsonl as it grows; writes the console,
and the run's peak memory to peak_memory.json beside the log (models/train_finish.py reports it).

Started by scripts/train_lora.sh beside llamafactory-cli (whose own output goes to train.log); stops when
sent SIGTERM or when the script that started it is gone. Memory: with nvidia-smi, the GPU memory in use on
the visible GPUs (every process's, sampled each interval); without, the summed RSS of the training's
processes (every descendant of --parent).

    python -m models.train_progress --log save/beauty.partial/trainer_log.jsonl --name beauty --parent PID
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time

from tqdm import tqdm

from common.cli import run_main
from common.io import write_json_atomic
from common.procs import descendants

PEAK_FILE = "peak_memory.json"


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def new_rows(path, offset):
    """(rows, offset): the complete jsonl lines written to `path` since `offset`."""
    if not os.path.isfile(path):
        return [], offset
    with open(path, encoding="utf-8") as f:
        f.seek(offset)
        text = f.read()
    complete = text[:text.rfind("\n") + 1]
    rows = []
    for line in complete.splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows, offset + len(complete.encode("utf-8"))


class Progress:
    """A tqdm bar on a terminal; in a log file, one plain line every two minutes and one where it stopped short."""

    def __init__(self, name, tty, every=120):
        self.name, self.tty, self.every = name, tty, every
        self.step, self.total, self.postfix, self.printed = 0, None, {}, time.time()
        self.bar = tqdm(total=None, desc=name, unit="step", file=sys.stderr, dynamic_ncols=True,
                        bar_format="{desc}: {n_fmt}/{total_fmt} steps [{elapsed}<{remaining}{postfix}]") if tty else None

    def update(self, rows):
        for row in rows:
            self.step, self.total = row.get("current_steps", self.step), row.get("total_steps", self.total)
            for key in ("loss", "eval_loss"):
                if row.get(key) is not None:
                    self.postfix[key] = f"{row[key]:.4f}"
        if rows and self.bar is not None:
            if self.bar.total != self.total:
                self.bar.reset(total=self.total)
            self.bar.n = self.step
            self.bar.set_postfix(self.postfix)
        elif rows and time.time() - self.printed >= self.every:
            self.line()

    def line(self):
        values = "".join(f", {k} {v}" for k, v in self.postfix.items())
        print(f"{self.name}: step {self.step}/{self.total or '?'}{values}", file=sys.stderr, flush=True)
        self.printed = time.time()

    def close(self):
        if self.bar is not None:
            self.bar.close()
        elif self.total and self.step < self.total:  # a finished run's last step and loss: in train_finish's line
            self.line()


def rss_mb(pid):
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as f:
            return next((int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:")), 0.0)
    except OSError:
        return 0.0


def gpu_used_mb():
    """MiB in use on the visible GPUs (nvidia-smi), or None without one."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    keep = set(visible.split(",")) if visible and visible.replace(",", "").isdigit() else None
    rows = [line.split(",") for line in out.strip().splitlines() if "," in line]
    return sum(float(used) for index, used in rows if keep is None or index.strip() in keep)


class PeakMemory:
    """The largest memory seen while training, written to `path` as it grows."""

    def __init__(self, path, parent):
        self.path, self.parent, self.peak, self.where = path, parent, 0.0, None

    def sample(self):
        used, where = gpu_used_mb(), "GPU"
        if used is None:
            used, where = sum(rss_mb(pid) for pid in descendants(self.parent)), "RSS"
        if used > self.peak:
            self.peak, self.where = used, where
            write_json_atomic(self.path, {"peak_mb": round(self.peak, 1), "of": where})


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--log", required=True, help="trainer_log.jsonl in LLaMA-Factory's output_dir")
    p.add_argument("--name", required=True, help="the module's name, shown before the bar")
    p.add_argument("--parent", type=int, required=True, help="stop when this process is gone")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between reads of the log")
    args = p.parse_args(argv)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the training's to handle
    progress = Progress(args.name, sys.stderr.isatty())
    memory = PeakMemory(os.path.join(os.path.dirname(args.log), PEAK_FILE), args.parent)
    offset = 0  # a resumed run's log already holds its first steps: the bar starts there
    while True:
        rows, offset = new_rows(args.log, offset)
        progress.update(rows)
        memory.sample()
        if stop or not alive(args.parent):
            break
        time.sleep(args.interval)
    progress.update(new_rows(args.log, offset)[0])
    progress.close()
    return 0


if __name__ == "__main__":
    run_main(main)
