"""data_process.process: real-data statistics, leave-one-out samples, titles, layouts, determinism, bad input."""

import gzip
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from common.io import dump_jsonl_line
from common.prompt import SEP, parse_user_prompt, split_titles
from data_process import process
from data_process.samples import SampleBuilder
from tests.helpers import (
    CLEAN,
    REPO,
    asin,
    expected_sequences,
    meta_records,
    review_lines,
    user_order,
    write_raw,
)


def run_process(raw, out, *extra):
    process.main(["--raw-dir", str(raw), "--domain", "beauty", "--train-dir", str(out / "train"),
                  "--test-dir", str(out / "test"), *extra])
    return out


def read(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def parts(sample):
    msgs = sample["messages"]
    history, cands = parse_user_prompt(msgs[1]["content"])
    return history, cands, split_titles(msgs[2]["content"])


@pytest.mark.parametrize("category, users, items, interactions", [
    ("Beauty", 22363, 12101, 198502),
    ("Sports_and_Outdoors", 35598, 18357, 296337),
    ("Toys_and_Games", 19412, 11924, 167597),
])
def test_real_data_reproduces_published_statistics(shared_data, tmp_path, category, users, items,
                                                   interactions):
    process.main(["--raw-dir", str(shared_data), "--domain", category, "--train-dir", str(tmp_path / "tr"),
                  "--test-dir", str(tmp_path / "te"), "--train-samples", "40", "--valid-samples", "10",
                  "--test-users", "25"])
    d = {"Beauty": "beauty", "Sports_and_Outdoors": "sports", "Toys_and_Games": "toys"}[category]
    stats = json.loads((tmp_path / "tr" / f"{d}.stats.json").read_text())
    assert (stats["users"], stats["items"], stats["interactions"]) == (users, items, interactions)
    table = read(tmp_path / "tr" / f"{d}.items.jsonl")
    titles = [r["title"] for r in table]
    assert len(table) == items and len(set(titles)) == items
    assert not any(SEP in t or t != t.strip() or t.startswith("|") or t.endswith("|") for t in titles)
    assert sum(r["train_count"] for r in table) == interactions - 2 * users
    assert len(read(tmp_path / "tr" / f"{d}.jsonl")) == 50
    raw_lines = (tmp_path / "te" / f"{d}.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    assert all(dump_jsonl_line(json.loads(line)) == line for line in raw_lines)
    test = read(tmp_path / "te" / f"{d}.jsonl")
    assert len(test) == 25 and len({r["user"] for r in test}) == 25
    for sample in test:
        history, cands, answer = parts(sample)
        assert 1 <= len(history) <= 20 and len(cands) == 30 == len(set(cands))
        assert set(cands) <= set(titles) and not set(history) & set(cands)
        assert len(answer) == 5 and set(answer) <= set(cands)


def test_title_words_cuts_long_titles_and_changes_no_statistic(shared_data, tmp_path):
    """Sports has 'titles' of up to 1,314 words (whole descriptions): --title-words 20 cuts them, and the
    published users, items and interactions stay; titles that become equal are told apart."""
    process.main(["--raw-dir", str(shared_data), "--domain", "sports", "--train-dir", str(tmp_path / "tr"),
                  "--test-dir", str(tmp_path / "te"), "--train-samples", "10", "--valid-samples", "0",
                  "--test-users", "5", "--title-words", "20"])
    stats = json.loads((tmp_path / "tr" / "sports.stats.json").read_text())
    assert (stats["users"], stats["items"], stats["interactions"]) == (35598, 18357, 296337)
    assert stats["options"]["title_words"] == 20 and stats["titles_disambiguated"] > 195  # 195 uncut
    titles = [r["title"] for r in read(tmp_path / "tr" / "sports.items.jsonl")]
    assert len(set(titles)) == len(titles) == 18357
    words = [len(re.sub(r"( \([^()]*\))+$", "", t).split()) for t in titles]  # without the told-apart suffix
    assert max(words) == 20 and sum(w == 20 for w in words) > 300


def test_fast_rendering_matches_make_sample_byte_for_byte():
    titles = ['Say "hi" \\ back', "Crème brûlée kit ✓", "Tab\u2028sep", "日本語 タイトル", "a/b <c> & d"] + \
             [f"Item {i}" for i in range(40)]
    builder = SampleBuilder(titles, history=3, candidates=30)
    draws = builder.draws(np.random.default_rng(0))
    for k in range(1, 6):
        sample = builder.build([0, 1, 2, 3, 4, 5], k, draws)
        assert builder.render(sample) == dump_jsonl_line(builder.sample_dict(sample))
        assert builder.render(sample, 'U"1') == dump_jsonl_line({**builder.sample_dict(sample), "user": 'U"1'})


def test_leave_one_out_samples_follow_the_sequences(tmp_path):
    out = run_process(write_raw(tmp_path / "raw"), tmp_path, "--history", "3", "--train-samples", "100000")
    table = read(out / "train" / "beauty.items.jsonl")
    title = {int(r["asin"][1:]): r["title"] for r in table}
    seqs = {u: [i for i in s if i in title] for u, s in expected_sequences().items()}
    seqs["U000"][2:4] = seqs["U000"][3], seqs["U000"][2]  # equal times: the file's line order
    first_seen = user_order()
    for split, offset in (("beauty", 1), ("beauty_valid", 2)):
        rows = read(out / "test" / f"{split}.jsonl")
        assert [r["user"] for r in rows] == first_seen  # every user, in first-appearance order
        for row in rows:
            seq = seqs[row["user"]]
            history, cands, answer = parts(row)
            prefix, target = seq[:len(seq) - offset], seq[len(seq) - offset]
            assert history == [title[i] for i in prefix[-3:]]
            assert answer[0] == title[target] and len(answer) == 5 and set(answer) <= set(cands)
            assert len(set(cands)) == 30 and title[target] in cands
            assert not {title[i] for i in prefix} & set(cands)  # negatives avoid the whole prefix
    train = read(out / "train" / "beauty.jsonl")
    assert len(train) == sum(len(s) - 2 for s in seqs.values())  # validation + every training position
    counts = {i: sum(s[:-2].count(i) for s in seqs.values()) for i in title}
    assert {int(r["asin"][1:]): r["train_count"] for r in table} == counts


def test_answer_items_1_trains_on_the_target_alone_and_changes_nothing_else(tmp_path):
    raw = write_raw(tmp_path / "raw")
    five = run_process(raw, tmp_path / "five", "--train-samples", "100000")
    one = run_process(raw, tmp_path / "one", "--train-samples", "100000", "--answer-items", "1")
    for a, b in zip(read(five / "train" / "beauty.jsonl"), read(one / "train" / "beauty.jsonl")):
        (hist_a, cands_a, ans_a), (hist_b, cands_b, ans_b) = parts(a), parts(b)
        assert (hist_a, cands_a) == (hist_b, cands_b) and len(ans_a) == 5 and ans_b == ans_a[:1]
    for split in ("beauty.jsonl", "beauty_valid.jsonl"):  # what inference and metrics read keeps 5
        assert (five / "test" / split).read_bytes() == (one / "test" / split).read_bytes()
    assert json.loads((one / "train" / "beauty.stats.json").read_text())["options"]["answer_items"] == 1


def test_titles_are_cleaned_disambiguated_and_untitled_items_dropped(tmp_path):
    out = run_process(write_raw(tmp_path / "raw"), tmp_path, "--train-samples", "5")
    title = {r["asin"]: r["title"] for r in read(out / "train" / "beauty.items.jsonl")}
    assert {asin(i): title[asin(i)] for i in CLEAN} == {asin(i): t for i, t in CLEAN.items()}
    assert not {asin(i) for i in (6, 16, 26, 36)} & set(title) and len(title) == 76
    stats = json.loads((out / "train" / "beauty.stats.json").read_text())
    assert stats["dropped"]["items_without_title"] == 3 and stats["dropped"]["items_without_meta"] == 1
    assert (stats["users"], stats["items"], stats["interactions"]) == (80, 76, 608)
    info = json.loads((out / "train" / "dataset_info.json").read_text())
    assert info["beauty"]["file_name"] == "beauty.jsonl" and list(info) == ["beauty"]


def test_refilter_5core_after_dropping_untitled_items(tmp_path):
    out = run_process(write_raw(tmp_path / "raw"), tmp_path, "--refilter-5core", "--history", "0")
    stats = json.loads((out / "train" / "beauty.stats.json").read_text())
    # users u = 6 mod 10 lose 4 of 8 items; their other items only they bought then fall to 4 users
    assert (stats["users"], stats["items"], stats["interactions"]) == (72, 72, 576)
    rows = read(out / "test" / "beauty.jsonl")
    assert not any(r["user"][-1] == "6" for r in rows) and all(len(parts(r)[0]) == 7 for r in rows)


def test_2018_layout_gives_the_same_files_and_outputs_are_deterministic(tmp_path):
    a = run_process(write_raw(tmp_path / "raw14"), tmp_path / "a", "--test-users", "30")
    b = run_process(write_raw(tmp_path / "raw14"), tmp_path / "b", "--test-users", "30")
    c = run_process(write_raw(tmp_path / "raw18", layout="2018"), tmp_path / "c", "--test-users", "30")
    d = run_process(write_raw(tmp_path / "raw14"), tmp_path / "d", "--test-users", "30", "--seed", "7")
    files = [os.path.join(sub, f) for sub in ("train", "test") for f in sorted(os.listdir(a / sub))]
    assert len(files) == 6
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes() == (c / f).read_bytes(), f
    assert (a / "train/beauty.jsonl").read_bytes() != (d / "train/beauty.jsonl").read_bytes()
    users = [r["user"] for r in read(a / "test" / "beauty.jsonl")]
    assert len(users) == 30 and users == [u for u in user_order() if u in users]
    assert users == [r["user"] for r in read(a / "test" / "beauty_valid.jsonl")]


def test_a_few_bad_lines_are_skipped_with_a_warning(tmp_path, capsys):
    lines = review_lines()
    raw = write_raw(tmp_path / "raw", reviews=lines[:100] + ["{not json\n"] + lines[100:])
    out = run_process(raw, tmp_path, "--max-bad-fraction", "0.01")
    assert "warning: skipped 1 bad of 641 lines" in capsys.readouterr().err
    stats = json.loads((out / "train" / "beauty.stats.json").read_text())
    assert stats["dropped"]["bad_review_lines"] == 1 and stats["interactions"] == 608


def _gz(lines):
    return gzip.compress("".join(lines).encode(), mtime=0)


REVIEWS, META = "reviews_Beauty_5.json.gz", "meta_Beauty.json.gz"
BAD_INPUTS = {
    "truncated gzip": (REVIEWS, lambda: _gz(review_lines())[:-40], "truncated gzip"),
    "not gzip": (REVIEWS, lambda: "".join(review_lines()).encode(), "not a gzip file"),
    "invalid line": (REVIEWS, lambda: _gz(review_lines()[:5] + ["{oops\n"] + review_lines()[5:]),
                     "not valid JSON"),
    "missing asin": (REVIEWS, lambda: _gz(['{"reviewerID": "U1", "unixReviewTime": 5}\n'] + review_lines()),
                     "missing 'asin'"),
    "missing reviewerID": (REVIEWS, lambda: _gz(review_lines() + ['{"asin": "A0001", "unixReviewTime": 5}\n']),
                           "missing 'reviewerID'"),
    "meta call": (META, lambda: _gz([repr(r) + "\n" for r in meta_records()]
                                    + ["__import__('os').system('touch PWNED')\n"]), "neither JSON nor"),
    "meta call in a field": (META, lambda: _gz(["{'asin': 'A0001', 'title': __import__('os').system('touch PWNED')}\n"]
                                               + [repr(r) + "\n" for r in meta_records()]), "neither JSON nor"),
    "empty reviews": (REVIEWS, lambda: _gz([]), "empty file"),
    "zero-byte meta": (META, lambda: b"", "empty file"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS) + ["unknown category", "missing file"])
def test_bad_input_is_one_line_error_and_leaves_no_output(tmp_path, case):
    raw = write_raw(tmp_path / "raw")
    domain = "beautyy" if case == "unknown category" else "beauty"
    if case == "missing file":
        os.remove(raw / META)
    elif case in BAD_INPUTS:
        name, content, _ = BAD_INPUTS[case]
        (raw / name).write_bytes(content())
    proc = subprocess.run([sys.executable, "-m", "data_process.process", "--raw-dir", str(raw), "--domain",
                           domain, "--train-dir", str(tmp_path / "tr"), "--test-dir", str(tmp_path / "te")],
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": REPO}, check=False, capture_output=True,
                          text=True, timeout=120)
    expected = {"unknown category": "unknown domain 'beautyy'", "missing file": "no metadata file"}
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert expected.get(case, BAD_INPUTS.get(case, (0, 0, ""))[2]) in lines[0]
    assert not (tmp_path / "tr").exists() and not (tmp_path / "te").exists()
    assert not (tmp_path / "PWNED").exists()
