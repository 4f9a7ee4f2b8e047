"""inference/reaper.py: a run's engine processes end when the run is SIGKILLed (vLLM 0.32's EngineCore outlives
its parent otherwise); after a normal exit nothing is signalled; a pid whose process changed is left alone.
With real processes; the vLLM engine's own case: tests/test_inference_vllm.py."""

import os
import signal
import subprocess
import sys
import time

from common.procs import start_time
from tests.helpers import REPO

# a "run": starts a child that would outlive it (a new session, as an engine process is out of reach of the
# run's group), then the reaper, prints the child's pid and waits
RUN = """
import subprocess, sys, time
from inference import reaper
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True,
                         stdout=subprocess.DEVNULL)
keep = reaper.watch()
print(child.pid, flush=True)
if sys.argv[1] == "exit":
    child.terminate(); child.wait(); keep.stdin.close(); keep.wait(); print("closed", flush=True)
else:
    time.sleep(120)
"""


def start_run(how):
    proc = subprocess.Popen([sys.executable, "-c", RUN, how], cwd=REPO, stdout=subprocess.PIPE, text=True)
    return proc, int(proc.stdout.readline())


def gone_within(pid, start, seconds):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if start_time(pid) != start:
            return True
        time.sleep(0.05)
    return False


def test_a_killed_runs_processes_end_with_it():
    run, child = start_run("sleep")
    start = start_time(child)
    assert start is not None
    time.sleep(0.3)
    assert start_time(child) == start  # alive while the run lives
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    assert gone_within(child, start, 10), "the child outlived its killed run"


def test_a_normal_exit_signals_nothing_and_a_changed_pid_is_left_alone(tmp_path):
    run, child = start_run("exit")
    assert run.stdout.readline().strip() == "closed" and run.wait() == 0
    # the reaper only signals the processes it was given, by pid and start time: a process with another start
    # time under a named pid (a reused pid) is not touched
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        keep = subprocess.Popen([sys.executable, "-m", "inference.reaper", f"{other.pid}:{start_time(other.pid) + 1}"],
                                cwd=REPO, stdin=subprocess.PIPE)
        keep.stdin.close()
        assert keep.wait(timeout=10) == 0
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()
