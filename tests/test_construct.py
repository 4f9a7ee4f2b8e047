"""data_process.construct: capped seeded mixing, registration in dataset_info.json, refusals."""

import json
import os
import subprocess
import sys

import pytest

from common.cli import UserError
from common.dataset_info import sharegpt_entry
from common.prompt import make_sample
from data_process import construct

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = {"beauty": 50, "sports": 30, "toys": 12}


def line(domain, i):
    return json.dumps(make_sample([f"{domain} seen {i}"], [f"{domain} item {i}", "other"],
                                  [f"{domain} item {i}"]), ensure_ascii=False) + "\n"


@pytest.fixture
def train_dir(tmp_path):
    for d, n in SIZES.items():
        (tmp_path / f"{d}.jsonl").write_text("".join(line(d, i) for i in range(n)), encoding="utf-8")
    (tmp_path / "dataset_info.json").write_text(json.dumps({"alpaca_x": {"file_name": "x.json"}}))
    return tmp_path


def run(train_dir, *args):
    construct.main(["--train-dir", str(train_dir), *args])


def lines_of(path):
    return path.read_text(encoding="utf-8").splitlines(keepends=True)


def test_hybrids_hold_capped_shuffled_lines_of_each_domain_and_are_registered(train_dir):
    run(train_dir, "--target", "beauty", "--sources", "sports", "toys", "--cap", "20", "--all-mixed")
    for name, parts in (("beauty_sports", ["beauty", "sports"]), ("beauty_toys", ["beauty", "toys"]),
                        ("beauty_sports_toys", ["beauty", "sports", "toys"])):
        got = lines_of(train_dir / f"{name}.jsonl")
        assert len(got) == len(set(got)) == sum(min(20, SIZES[d]) for d in parts)
        for d in parts:
            originals = set(lines_of(train_dir / f"{d}.jsonl"))
            assert sum(g in originals for g in got) == min(20, SIZES[d])
        first_domain = [json.loads(g)["messages"][2]["content"].split()[0] for g in got]
        assert first_domain != sorted(first_domain, key=parts.index)  # mixed, not concatenated
    info = json.loads((train_dir / "dataset_info.json").read_text())
    assert set(info) == {"alpaca_x", "beauty_sports", "beauty_toys", "beauty_sports_toys"}
    assert info["beauty_toys"] == sharegpt_entry("beauty_toys.jsonl")
    assert not [f for f in os.listdir(train_dir) if f.endswith(".tmp")]


def test_same_seed_same_bytes_and_files_independent_of_other_sources(train_dir, tmp_path_factory):
    run(train_dir, "--target", "beauty", "--sources", "sports", "--cap", "20")
    first = (train_dir / "beauty_sports.jsonl").read_bytes()
    run(train_dir, "--target", "beauty", "--sources", "toys", "sports", "--cap", "20")
    assert (train_dir / "beauty_sports.jsonl").read_bytes() == first
    run(train_dir, "--target", "beauty", "--sources", "sports", "--cap", "20", "--seed", "1")
    assert (train_dir / "beauty_sports.jsonl").read_bytes() != first


@pytest.mark.parametrize("args, message", [
    (["--target", "beauty", "--sources", "sports", "beauty"], "target 'beauty' is also listed among the sources"),
    (["--target", "beauty", "--sources", "sportz"], "unknown domain 'sportz'"),
    (["--target", "beauty", "--sources", "food"], "food.jsonl not found"),
    (["--target", "beauty", "--sources", "sports", "sports"], "listed twice"),
])
def test_refusals_are_one_line_errors_that_write_nothing(train_dir, args, message):
    before = sorted(os.listdir(train_dir))
    proc = subprocess.run([sys.executable, "-m", "data_process.construct", "--train-dir", str(train_dir), *args],
                          cwd=REPO, check=False, capture_output=True, text=True, timeout=60)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr
    assert sorted(os.listdir(train_dir)) == before


def test_bad_input_file_or_registry_stops_before_writing(train_dir):
    with open(train_dir / "toys.jsonl", "a") as f:
        f.write('{"no_messages": 1}\n')
    with pytest.raises(UserError, match=r"toys.jsonl:13: not a sharegpt line"):
        run(train_dir, "--target", "beauty", "--sources", "sports", "toys")
    (train_dir / "dataset_info.json").write_text("{broken")
    with pytest.raises(UserError, match="dataset_info.json: not valid JSON"):
        run(train_dir, "--target", "beauty", "--sources", "sports")
    assert not list(train_dir.glob("beauty_*"))


def test_shell_scripts_run_the_stages_end_to_end(tmp_path):
    from tests.helpers import write_raw
    raw = write_raw(tmp_path / "raw")
    for suffix in ("reviews_{}_5.json.gz", "meta_{}.json.gz"):  # a second domain: the same files
        os.link(raw / suffix.format("Beauty"), raw / suffix.format("Toys_and_Games"))
    env = {**os.environ, "PYTHON": sys.executable, "DATA_DIR": str(tmp_path / "tr"),
           "TEST_DIR": str(tmp_path / "te"), "TRAIN_SAMPLES": "30", "TEST_USERS": "5"}
    steps = [("download_data.sh", {"RAW_DIR": str(tmp_path / "raw_copy"), "DOMAINS": "beauty", "RAW_MIRROR": str(raw)}),
             ("make_data.sh", {"RAW_DIR": str(raw), "DOMAINS": "beauty toys"}),
             ("construct.sh", {"TARGET": "toys", "SOURCES": "beauty", "CAP": "40"})]
    for script, extra in steps:
        proc = subprocess.run(["bash", os.path.join(REPO, "scripts", script)], env={**env, **extra},
                              check=False, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(tmp_path / "raw_copy")) == ["meta_Beauty.json.gz", "reviews_Beauty_5.json.gz"]
    assert len(lines_of(tmp_path / "te" / "toys.jsonl")) == 5
    assert len(lines_of(tmp_path / "tr" / "toys_beauty.jsonl")) == 80
    info = json.loads((tmp_path / "tr" / "dataset_info.json").read_text())
    assert sorted(info) == ["beauty", "toys", "toys_beauty"]
