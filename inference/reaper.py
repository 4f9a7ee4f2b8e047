"""Ends a run's vLLM engine processes when the run dies without closing them (SIGKILL, the out-of-memory
killer, a scheduler's forced stop): vLLM 0.32's EngineCore outlives a killed parent and keeps its memory, GPU
memory included (vllm-project/vllm#55510; the fixes proposed there are not merged), so the next engine on the
machine fails for want of it.

The run starts this file as a process of its own (`watch`) once its engine is up, naming the processes then
below it, and keeps the write end of a pipe that is this process's standard input. End of file means the run
has exited, however it ended. The processes named are then sent SIGTERM (vLLM's engine shuts down on it),
and SIGKILL after a grace period, each only while it is the same process (its start time unchanged), so a
reused pid is never touched. After a normal exit they are gone already and nothing is sent. Linux (/proc)
only; elsewhere `watch` does nothing.

    python -m inference.reaper PID:START ...   (from the repository root; standard input: the pipe)
"""

import os
import signal
import subprocess
import sys
import time

from common.procs import descendants, start_time

GRACE_S = 5.0
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def watch(pid=None):
    """Start the reaper for the processes now below `pid` (default: this process); returns its Popen, whose
    stdin must stay open for as long as the run lives (closing it means the run is over), or None."""
    pid = os.getpid() if pid is None else pid
    if not os.path.isdir("/proc"):
        return None
    named = [f"{p}:{t}" for p in descendants(pid) for t in [start_time(p)] if t is not None]
    if not named:
        return None
    return subprocess.Popen([sys.executable, "-m", "inference.reaper", *named], cwd=REPO, stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def alive(named):
    return [(pid, start) for pid, start in named if start_time(pid) == start]


def signal_all(named, sig):
    for pid, _ in named:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def main(argv):
    named = [tuple(map(int, item.split(":"))) for item in argv]
    sys.stdin.buffer.read()  # returns at end of file: the run has exited
    signal_all(alive(named), signal.SIGTERM)
    deadline = time.monotonic() + GRACE_S
    while alive(named) and time.monotonic() < deadline:
        time.sleep(0.1)
    signal_all(alive(named), signal.SIGKILL)


if __name__ == "__main__":
    main(sys.argv[1:])
