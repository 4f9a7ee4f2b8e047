"""SEEDS="..." bash scripts/quickstart.sh: one whole run per seed, and a summary that is the per-seed reports'
means and sample deviations; the same seeds give the same files. Run at the smallest sizes, in a copy of the
repository (the quickstart writes its folders at the repository's root)."""

import json
import os
import shutil
import statistics
import subprocess

import pytest

from metric.seeds import SUMMARY_METRICS, main as seeds_main
from tests.helpers import REPO

SMALLEST = {"TARGET_SAMPLES": "24", "TARGET_VALID": "8", "TRAIN_SAMPLES": "24", "VALID_SAMPLES": "8",
            "TEST_USERS": "24", "BASE_STEPS": "5", "N_USERS": "300", "ROWS": "base target_only weaverec",
            "GRID": "", "BOOTSTRAP": "50", "BACKEND": "hf", "PARALLEL": "2", "TRAIN_ARGS": "num_train_epochs=1"}


def repo_copy(dest):
    """The files of the repository a clone would have (and new ones not ignored), with the environment linked in."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO, capture_output=True, check=True).stdout
    for rel in files.decode().split("\0"):
        if rel and (REPO / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dest / rel)
    (dest / ".venv").symlink_to(REPO / ".venv")
    return dest


def run_seeds(root, seeds):
    env = dict(os.environ, HF_HUB_OFFLINE="1", SEEDS=seeds, **SMALLEST)
    proc = subprocess.run(["bash", "scripts/quickstart.sh"], cwd=root, capture_output=True, text=True,
                          env=env, check=False, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_two_seeds_summarised_and_repeated_identically(tmp_path):
    first = repo_copy(tmp_path / "a")
    out = run_seeds(first, "1 2").stdout
    assert "seed 1 of 1 2" in out and "seed 2 of 1 2" in out
    seeds_dir = first / "result" / "transfer_seeds"
    # each seed its own folders, written from its own seed
    assert (first / "raw/synthetic_seed1/synth_seed").read_text().strip() == "1"
    assert (first / "raw/synthetic_seed2/synth_seed").read_text().strip() == "2"
    assert (first / "save/transfer_seed1/sports").is_dir() and (first / "save/transfer_seed2/sports").is_dir()
    reports = [json.loads((seeds_dir / f"seed{s}" / "metrics.json").read_text()) for s in (1, 2)]
    assert (first / "testdata/transfer_seed1/sports.jsonl").read_bytes() != \
        (first / "testdata/transfer_seed2/sports.jsonl").read_bytes()

    summary = json.loads((seeds_dir / "summary.json").read_text())
    assert summary["seeds"] == ["seed1", "seed2"]
    assert [r["name"] for r in summary["rows"]] == [r["name"] for r in reports[0]["rows"]]
    for row in summary["rows"]:
        for m in SUMMARY_METRICS:
            values = [next(r for r in rep["rows"] if r["name"] == row["name"])["metrics"][m]["value"]
                      for rep in reports]
            assert row["metrics"][m]["mean"] == pytest.approx(statistics.mean(values), abs=1e-12)
            assert row["metrics"][m]["sd"] == pytest.approx(statistics.stdev(values), abs=1e-12)
    pairs = {(c["a"], c["b"]) for c in summary["comparisons"]}
    assert ("weaverec", "target_only") in pairs
    for comp in summary["comparisons"]:
        cells = [next(c for c in rep["comparisons"] if (c["a"], c["b"]) == (comp["a"], comp["b"]))["metrics"]["NDCG@1"]
                 for rep in reports]
        got = comp["metrics"]["NDCG@1"]
        assert got["mean"] == pytest.approx(statistics.mean(c["diff"] for c in cells), abs=1e-12)
        assert got["significant_positive"] == sum(c["p"] < 0.05 and c["diff"] > 0 for c in cells)
    md = (seeds_dir / "summary.md").read_text()
    assert "# 2 seeds: seed1, seed2" in md and "weaverec - target_only" in md
    assert (seeds_dir / "summary.png").read_bytes()[:4] == b"\x89PNG"

    # a second clone, the same seeds: the same predictions and summary
    second = repo_copy(tmp_path / "b")
    run_seeds(second, "1 2")
    for rel in ["summary.json", "summary.md", "seed1/metrics.json", "seed2/metrics.json",
                "seed1/weaverec/output.jsonl", "seed2/target_only/output.jsonl"]:
        assert (second / "result/transfer_seeds" / rel).read_bytes() == (seeds_dir / rel).read_bytes(), rel

    # a finished seed is reused: a rerun trains nothing and rebuilds no model
    again = run_seeds(first, "1 2").stdout
    assert "trained in" not in again and "base model -> " not in again


def test_a_missing_seed_report_is_one_line(tmp_path, capsys):
    (tmp_path / "seed1").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        from common.cli import run_main
        run_main(seeds_main, ["--runs", str(tmp_path / "seed1"), "--out-dir", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "metrics.json not found" in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_quickstart_refuses_seeds_that_are_not_numbers(tmp_path):
    proc = subprocess.run(["bash", "scripts/quickstart.sh"], cwd=REPO, capture_output=True, text=True, check=False,
                          env={"PATH": "/usr/bin:/bin", "SEEDS": "1 two", "RUN_DIR": str(tmp_path / "run")})
    assert proc.returncode == 2
    assert proc.stderr.strip() == 'error: SEEDS="1 two": whole numbers, space-separated'
    assert proc.stdout == ""
