"""The shell scripts' one convention (scripts/lib.sh): each sources the shared helper, the six numbered steps
say which step they are, the Python is chosen in one place, and a variable set by several scripts has one
default (quickstart.sh, a preset of small sizes, may set other sizes and its own report folder)."""

import re
import subprocess

from tests.helpers import REPO

SCRIPTS = sorted(p for p in (REPO / "scripts").glob("*.sh") if p.name != "lib.sh")
STEPS = {"download_data.sh": 1, "make_data.sh": 2, "construct.sh": 3, "train_modules.sh": 4, "train_lora.sh": 4,
         "merge_and_test.sh": 5, "metric.sh": 6}
PRESET = {"TRAIN_SAMPLES", "VALID_SAMPLES", "TEST_USERS", "HISTORY", "ANSWER_ITEMS", "SOURCES", "MODEL", "SAVE_DIR",
          "RUN_DIR", "DATA_DIR", "TEST_DIR", "PARALLEL", "SYNTH_DIR", "SYNTH_SEED"}  # quickstart.sh's own sizes and folders (one set per scenario)
DEFAULT = re.compile(r"^([A-Z][A-Z0-9_]*)=\$\{\1:?-(.*?)\}(?:\s|$)", re.M)


def test_every_script_opens_the_same_way():
    for path in SCRIPTS:
        text = path.read_text()
        assert text.startswith("#!/usr/bin/env bash\n"), path.name
        assert "set -euo pipefail\ncd \"$(dirname \"$0\")/..\"\nsource scripts/lib.sh\n" in text, path.name
        assert ".venv/bin/python ]" not in text, f"{path.name} chooses the Python itself (lib.sh does)"
        assert subprocess.run(["bash", "-n", str(path)], check=False).returncode == 0, path.name


def test_the_numbered_steps_say_which_step_they_are():
    for name, n in STEPS.items():
        text = (REPO / "scripts" / name).read_text()
        assert f"Step {n} of 6" in text.split("set -euo")[0], name
    for name in ("download_data.sh", "make_data.sh", "construct.sh", "train_modules.sh", "merge_and_test.sh",
                 "metric.sh"):
        assert re.search(rf"^\s*step {STEPS[name]} ", (REPO / "scripts" / name).read_text(), re.M), name


def test_one_default_per_variable():
    seen = {}
    for path in SCRIPTS:
        for var, default in DEFAULT.findall(path.read_text()):
            if path.name == "quickstart.sh" and var in PRESET:
                continue
            seen.setdefault(var, {})[path.name] = default
    differ = {var: where for var, where in seen.items() if len(set(where.values())) > 1}
    assert not differ, differ
    assert len([v for v, where in seen.items() if len(where) > 1]) >= 10  # the check sees the shared ones


def test_lib_names_datasets_and_splits_lists():
    out = subprocess.run(["bash", "-c", 'source scripts/lib.sh; split_list xs "a  b c"; echo "${#xs[@]}" '
                          '"$(hybrid_name sports beauty)" "$(mixed_name sports beauty toys)"'],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    assert out == ["3", "sports_beauty", "sports_beauty_toys"]


def test_quickstart_refuses_an_unknown_scenario_before_doing_anything(tmp_path):
    proc = subprocess.run(["bash", "scripts/quickstart.sh"], cwd=REPO, capture_output=True, text=True, check=False,
                          env={"PATH": "/usr/bin:/bin", "SCENARIO": "both", "RUN_DIR": str(tmp_path / "run")})
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: SCENARIO=both: use transfer or conflict"
    assert proc.stdout == "" and not (tmp_path / "run").exists()


def test_run_logged_keeps_the_console_in_its_log_and_shows_its_tail_on_failure(tmp_path):
    """A step's output goes to its log; a failure shows the log's last lines and names the script, not `env`."""
    script = tmp_path / "fails.sh"
    script.write_text("echo one; echo two; exit 3\n")
    log = tmp_path / "logs" / "step.log"
    ok = subprocess.run(["bash", "-c", f'source scripts/lib.sh; run_logged {log} echo quiet'], cwd=REPO,
                        capture_output=True, text=True, check=False)
    assert ok.returncode == 0 and ok.stdout == ok.stderr == "" and log.read_text() == "quiet\n"
    failed = subprocess.run(["bash", "-c", f'source scripts/lib.sh; run_logged {log} env X=1 bash {script}'],
                            cwd=REPO, capture_output=True, text=True, check=False)
    assert failed.returncode == 3 and failed.stdout == ""
    assert failed.stderr.splitlines() == ["quiet", "one", "two", f"error: {script} failed (exit 3); full log: {log}"]
