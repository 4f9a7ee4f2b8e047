"""benchmarks/bench_7b.py --small end to end on CPU at the smallest sizes, so that the GPU benchmark cannot rot
between GPU sessions: every stage runs the project's entry point and leaves its row and its outputs."""

import json
import subprocess
import sys

import pytest

from tests.helpers import REAL_TOKENIZER, REPO, SHARED_DATA

pytestmark = pytest.mark.slow

SIZES = ["--prompts", "2", "--train-samples", "8", "--train-steps", "2", "--batch-sizes", "1",
         "--max-new-tokens", "2", "--learn-steps", "1", "--learn-prompts", "2", "--diag-prompts", "2",
         "--diag-modes", "score", "--history", "5"]
GENERATE = [f"generate_{mode}_b{bs}" for mode in ("score", "constrained", "free") for bs in (1,)]


def test_small_run_writes_every_stage_row_and_output(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    cmd = [sys.executable, "-m", "benchmarks.bench_7b", "--small", "--diag", "on", "--out-dir", str(out),
           "--work-dir", str(work), "--raw-dir", str(SHARED_DATA), "--tokenizer", str(REAL_TOKENIZER), *SIZES]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    rows = {r["stage"]: r for r in json.loads((out / "bench_7b.json").read_text())["rows"]}
    help_text = subprocess.run([sys.executable, "-m", "inference.generate", "--help"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout
    sdpa = ["_sdpa-auto", "_sdpa-torch"] if "--sdpa-backends" in help_text else [""]
    masks = ["generate_constrained_b1_python-masks"] if "--constraint-masks" in help_text else []
    masks += ["generate_constrained_b1_compile"]
    diag = ["diag_tiny_model", "diag_profile_float32", f"diag_score_float32{sdpa[0]}"] + [
        f"diag_{kind}{s}" for s in sdpa for kind in ("score_bfloat16", "profile_bfloat16")]
    expected = ["checkpoint", "data", "preflight", "train", "merge_stacked", *GENERATE, *masks, *diag, "learn_weights",
                "merge_full"]
    assert sorted(rows) == sorted(expected)
    for name in expected:
        assert rows[name]["status"].startswith("ok"), (name, rows[name])
        assert rows[name]["seconds"] > 0 and rows[name]["rss_peak_gib"] > 0, rows[name]
        assert rows[name]["gpu_peak_gib"] is None and rows[name]["gpu_busy_pct"] is None  # no GPU here
    for name in GENERATE + masks + [f"diag_score_float32{sdpa[0]}"]:
        assert rows[name]["samples_per_s"] > 0 and rows[name]["startup_s"] > 0, rows[name]
    for name in GENERATE + masks:  # two batches of one: the first apart, the rate after it
        assert rows[name]["first_batch_s"] >= 0 and rows[name]["later_per_s"] > 0, rows[name]
    assert "| stage | seconds |" in (out / "bench_7b.md").read_text()

    base = work / "models" / "base"
    config = json.loads((base / "config.json").read_text())
    assert config["vocab_size"] == 152064 and config["rope_theta"] == 1e6 and "rope_parameters" not in config
    assert (base / "model.safetensors.index.json").is_file() and (base / "tokenizer.json").is_file()
    for adapter in ("target", "source1", "source2"):
        assert (work / "models" / "adapters" / adapter / "adapter_model.safetensors").is_file()
    assert (work / "save" / "sports" / "adapter_model.safetensors").is_file()
    assert (work / "merged" / "stacked" / "adapter_model.safetensors").is_file()
    assert (work / "merged" / "full" / "config.json").is_file()
    for name in GENERATE:
        lines = (work / "result" / name.removeprefix("generate_") / "output.jsonl").read_text().splitlines()
        assert len(lines) == 2
    result = work / "result"
    for other in masks:  # the reference automaton's masks and the static cache write the same answers
        expected = (result / "constrained_b1" / "output.jsonl").read_text()
        assert (result / other.removeprefix("generate_") / "output.jsonl").read_text() == expected
    assert any(p.suffix == ".json" for p in (work / "learned").iterdir())
    for s in sdpa:
        assert "Self CPU" in (out / f"diag_profile_bfloat16{s}.txt").read_text()


def test_generate_line_gives_the_rate_after_the_first_batch():
    from benchmarks.bench_7b_run import parse_generate

    line = ("wrote /w/out.jsonl: 130 lines (2 resumed), mode score, backend hf, batch 64 (--batch-size), model ready "
            "in 21.5s, 18.0s, 7.11 samples/s (first batch of 64 in 16.0s, then 32.00 samples/s), peak 17.8 GB GPU; "
            "valid titles 100.0%")
    row = parse_generate("log\n" + line + "\n")
    assert row == {"startup_s": 21.5, "samples_per_s": 7.11, "first_batch_s": 16.0, "later_per_s": 32.0}
    one_batch = line.replace(" (first batch of 64 in 16.0s, then 32.00 samples/s)", "")
    assert parse_generate(one_batch) == {"startup_s": 21.5, "samples_per_s": 7.11, "first_batch_s": None,
                                         "later_per_s": None}
    assert parse_generate("no summary")["samples_per_s"] is None


def test_the_largest_batch_runs_first_and_the_others_late():
    from benchmarks.bench_7b import STAGES, split_sizes

    assert split_sizes([16, 64]) == ([64], [16])
    assert split_sizes([8, 64, 16, 64]) == ([64], [16, 8])
    assert split_sizes([1]) == ([1], [])
    assert STAGES.index("generate") < STAGES.index("diag") < STAGES.index("generate_smaller") < STAGES.index("train")
