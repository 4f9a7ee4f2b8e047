"""End to end at tiny scale, through the user's shell scripts: synthetic raw data -> data stages ->
tiny base model -> LoRA modules trained by LLaMA-Factory -> merge -> inference -> metrics.

Covers the path the user's README promises ("download the provided checkpoints and jump straight to
merge_and_test"), with checkpoint-N folders exactly as LLaMA-Factory writes them and a base model
path in adapter_config.json from another machine, and the comparison script with every row.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.helpers import REPO

SOURCES = ["beauty", "toys"]
# a few LLaMA-Factory steps per module, with a checkpoint folder on the way
TRAIN_EXTRA = "max_samples=24 save_steps=2 logging_steps=1 cutoff_len=640"  # no prompt cut (longest 524)


def run(cmd, env_extra, timeout=600):
    env = {**os.environ, "PYTHON": sys.executable, **env_extra}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Synthetic data for sports <- beauty, toys, processed and mixed, and a tiny pre-trained base."""
    root = tmp_path_factory.mktemp("e2e")
    dirs = {k: str(root / k) for k in ("raw", "traindata", "testdata", "save", "result", "model")}
    run(["bash", "scripts/synthesize_data.sh"], {"SYNTH_DIR": dirs["raw"], "N_USERS": "400", "N_ITEMS": "120"})
    run(["bash", "scripts/make_data.sh"], {
        "RAW_DIR": dirs["raw"], "DATA_DIR": dirs["traindata"], "TEST_DIR": dirs["testdata"],
        "DOMAINS": "sports beauty toys", "TRAIN_SAMPLES": "60", "VALID_SAMPLES": "20",
        "TEST_USERS": "12", "HISTORY": "5"})
    run(["bash", "scripts/construct.sh"], {"DATA_DIR": dirs["traindata"], "TARGET": "sports",
                                           "SOURCES": " ".join(SOURCES), "ALL_MIXED": "1"})
    run(["bash", "scripts/build_model.sh"], {
        "DATA_DIR": dirs["traindata"], "DOMAINS": "sports beauty toys", "MODEL": dirs["model"],
        "BASE_STEPS": "20", "EXTRA_ARGS": "--hidden-size 64 --vocab-size 600 --batch-size 8 --no-progress"})
    return dirs


def train_env(work):
    return {"MODEL": work["model"], "DATA_DIR": work["traindata"], "SAVE_DIR": work["save"],
            "TRAIN_ARGS": TRAIN_EXTRA}


def test_provided_checkpoints_jump_straight_to_merge_and_test(work, tmp_path):
    run(["bash", "scripts/train_modules.sh"], {**train_env(work), "TARGET": "sports", "SOURCES": "beauty toys"})
    # "download the provided checkpoints": checkpoint folders copied elsewhere, as users receive them,
    # whose adapter_config.json names a base model path from the authors' machine
    provided = tmp_path / "save"
    ckpts = []
    for ds in ["sports", "sports_beauty", "sports_toys"]:
        found = sorted(d for d in os.listdir(os.path.join(work["save"], ds)) if d.startswith("checkpoint-"))
        assert found, f"LLaMA-Factory wrote no checkpoint-N folder for {ds}"
        dst = provided / ds / found[0]
        shutil.copytree(os.path.join(work["save"], ds, found[0]), dst)
        cfg_path = dst / "adapter_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["base_model_name_or_path"] = "/home/authors/models/Qwen2-7B-Instruct"
        cfg_path.write_text(json.dumps(cfg))
        ckpts.append(str(dst))
    pred = tmp_path / "result" / "weaverec" / "output.jsonl"
    test_file = os.path.join(work["testdata"], "sports.jsonl")
    out = run(["bash", "scripts/merge_and_test.sh"], {
        "MODEL": work["model"], "TARGET": "sports", "ADAPTERS": " ".join(ckpts),
        "MERGED": str(tmp_path / "merged"), "PRED": str(pred), "TEST_FILE": test_file, "MODE": "constrained"})
    assert "lambdas: 0.3333 0.3333 0.3333" in out
    lines = pred.read_text().splitlines()
    assert len(lines) == 12 and [json.loads(line)["id"] for line in lines] == list(range(12))
    report = tmp_path / "report"
    run(["bash", "scripts/metric.sh"], {"TEST_FILE": test_file, "PREDICTIONS": str(pred), "NAMES": "weaverec",
                                        "ITEMS": os.path.join(work["traindata"], "sports.items.jsonl"),
                                        "REPORT_DIR": str(report)})
    metrics = json.loads((report / "metrics.json").read_text())
    rows = {r["name"]: r["metrics"] for r in metrics["rows"]}
    assert set(rows) == {"weaverec", "random", "popularity", "content"}
    assert rows["weaverec"]["valid"]["value"] == 1.0  # constrained: always 5 distinct candidates
    for name in ("metrics.md", "metrics.png"):
        assert (report / name).stat().st_size > 0


def test_compare_trains_what_is_missing_and_reports_every_row(work):
    run_dir = os.path.join(work["result"], "compare")
    env = {**train_env(work), "TARGET": "sports", "SOURCES": "beauty toys", "RUN_DIR": run_dir,
           "TEST_DIR": work["testdata"], "GRID": "0 2", "VALID_USERS": "8", "BOOTSTRAP": "50"}
    out = run(["bash", "scripts/compare.sh"], env)
    assert "target weight chosen on 8 validation users" in out
    # a quiet console: LLaMA-Factory's and the merges' output in their logs, a line or two per module and row
    assert "input_ids" not in out and "[INFO" not in out and "queued" not in out
    assert len(out.splitlines()) <= 75  # 6 modules, 15 rows, 14 paired tests: 65 lines measured
    metrics = json.loads(open(os.path.join(run_dir, "metrics.json")).read())
    names = {r["name"] for r in metrics["rows"]}
    assert names == {"base", "target_only", "hybrid_beauty", "hybrid_toys", "mixed_all", "naive_merge",
                     "weaverec", "weaverec_tuned", "weaverec_likelihood", "ties", "dare_ties", "task_arithmetic", "random",
                     "popularity", "content"}
    pairs = {(c["a"], c["b"]) for c in metrics["comparisons"]}
    assert pairs == {("weaverec", "target_only"), ("weaverec", "naive_merge"), ("weaverec_tuned", "target_only"),
                     ("hybrid_beauty", "target_only"), ("hybrid_toys", "target_only"),
                     ("mixed_all", "target_only"), ("naive_merge", "target_only"), ("target_only", "base"),
                     ("weaverec", "popularity"), ("weaverec", "content"), ("weaverec_likelihood", "weaverec"),
                     ("weaverec_likelihood", "target_only"), ("weaverec_likelihood", "naive_merge"),
                     ("weaverec_tuned", "naive_merge")}
    # each module's budget, read from what LLaMA-Factory wrote
    budgets = {r["dataset"]: r for r in json.loads(open(os.path.join(run_dir, "training.json")).read())}
    assert set(budgets) == {"sports", "sports_beauty", "sports_toys", "beauty", "toys", "sports_beauty_toys"}
    for ds, r in budgets.items():
        lines = sum(1 for _ in open(os.path.join(work["traindata"], f"{ds}.jsonl")))
        assert r["lines"] == lines and r["epochs"] >= 1 and r["samples"] == min(24, lines) * r["epochs"] and r["steps"] >= 3
    # every module the comparison needs now exists; a second run trains nothing
    out = run(["bash", "scripts/compare.sh"], env)
    assert out.count("is finished and up to date") == 6
