"""Show one progress bar for a LoRA run: reads LLaMA-Factory's trainer_log.jsonl as it grows; writes the console.

Started by scripts/train_lora.sh beside llamafactory-cli (whose own output goes to train.log); stops when
sent SIGTERM or when the script that started it is gone.

    python -m models.train_progress --log save/beauty.partial/trainer_log.jsonl --name beauty --parent PID
"""

import argparse
import json
import os
import signal
import sys
import time

from tqdm import tqdm

from common.cli import run_main


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
    offset = 0  # a resumed run's log already holds its first steps: the bar starts there
    while True:
        rows, offset = new_rows(args.log, offset)
        progress.update(rows)
        if stop or not alive(args.parent):
            break
        time.sleep(args.interval)
    progress.update(new_rows(args.log, offset)[0])
    progress.close()
    return 0


if __name__ == "__main__":
    run_main(main)
