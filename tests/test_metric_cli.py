"""The metric stage end to end on small files built with the real prompt format (no model needed)."""

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest

from common.cli import UserError
from common.prompt import make_sample
from metric.baselines import content_outputs, popularity_outputs, random_outputs
from metric.metric import main
from metric.ranking import METRICS, score_table

REPO = Path(__file__).resolve().parents[1]
TITLES = [f"Brand {i % 7} product number {i}" for i in range(300)]


def build_test(n_users=80, seed=0):
    """Test lines (target first in the answer) and each line's (target, candidates)."""
    rng = random.Random(seed)
    lines, truth = [], []
    for u in range(n_users):
        picked = rng.sample(TITLES, 33)
        history, target, negatives = picked[:3], picked[3], picked[4:]
        cands = [target] + negatives
        rng.shuffle(cands)
        lines.append({**make_sample(history, cands, [target] + negatives[:4]), "user": f"U{u}"})
        truth.append((target, cands))
    return lines, truth


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def ranked(truth, rank_of_user):
    """Outputs that put each user's target at the given 1-based rank (0: left out)."""
    outs = []
    for i, (target, cands) in enumerate(truth):
        others = [c for c in cands if c != target][:5]
        r = rank_of_user(i)
        if r:
            others.insert(r - 1, target)
        outs.append("||".join(others[:5]))
    return outs


@pytest.fixture()
def case(tmp_path):
    lines, truth = build_test()
    test = write_jsonl(tmp_path / "testdata" / "beauty.jsonl", lines)
    perfect = ranked(truth, lambda i: 1)
    half = ranked(truth, lambda i: 1 if i % 2 else 0)
    write_jsonl(tmp_path / "result" / "perfect" / "output.jsonl",
                [{"id": i, "output": o} for i, o in enumerate(perfect)])
    write_jsonl(tmp_path / "result" / "half" / "output" / "output.jsonl", half)  # the published layout
    items = [{"id": i, "asin": f"A{i}", "title": t, "train_count": 1000 - i} for i, t in enumerate(TITLES)]
    write_jsonl(tmp_path / "traindata" / "beauty.items.jsonl", items)
    return tmp_path, test, truth


def run(tmp_path, *extra):
    out = tmp_path / "report"
    main(["--test-file", str(tmp_path / "testdata" / "beauty.jsonl"), "--out-dir", str(out),
          "--bootstrap", "200", *extra])
    return json.loads((out / "metrics.json").read_text()), out


def test_report_rows_best_and_files(case):
    tmp_path, _, _ = case
    rep, out = run(tmp_path, "--pred-dir", str(tmp_path / "result"),
                   "--items", str(tmp_path / "traindata" / "beauty.items.jsonl"))
    rows = {r["name"]: r["metrics"] for r in rep["rows"]}
    assert list(rows) == ["half", "perfect", "random", "content", "popularity"]
    assert all(rows["perfect"][m]["value"] == 1.0 for m in ("NDCG@1", "NDCG@3", "NDCG@5", "MRR", "valid"))
    assert rows["half"]["NDCG@1"]["value"] == pytest.approx(0.5)
    assert rows["half"]["NDCG@1"]["low"] < 0.5 < rows["half"]["NDCG@1"]["high"]
    assert rep["best"] == "perfect" and rep["lines"] == 80 and rep["match"] == "trim"
    comp = {c["b"]: c["metrics"] for c in rep["comparisons"] if c["a"] == "perfect"}
    assert comp["half"]["NDCG@1"]["diff"] == pytest.approx(0.5) and comp["half"]["NDCG@1"]["p"] < 0.01
    assert (out / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| perfect * |" in (out / "metrics.md").read_text()


def test_same_predictions_in_every_line_format_score_the_same(case):
    tmp_path, _, truth = case
    outs = ranked(truth, lambda i: i % 7)  # ranks 0..6: misses and hits at every position
    ours = write_jsonl(tmp_path / "f" / "ours.jsonl",
                       [{"id": i, "output": o, "ranking": [], "scores": []} for i, o in enumerate(outs)])
    original = write_jsonl(tmp_path / "f" / "original.jsonl", outs)
    lf = write_jsonl(tmp_path / "f" / "lf.jsonl",
                     [{"prompt": "", "predict": o, "label": t + "||x"} for o, (t, _) in zip(outs, truth)])
    rep, _ = run(tmp_path, "--predictions", str(ours), str(original), str(lf), "--no-baselines")
    values = [[r["metrics"][m]["value"] for m in METRICS] for r in rep["rows"]]
    assert values[0] == values[1] == values[2] and 0 < values[0][0] < values[0][2] < 1


def test_outputs_are_byte_identical_on_rerun(case):
    tmp_path, _, _ = case
    items = str(tmp_path / "traindata" / "beauty.items.jsonl")
    args = ["--pred-dir", str(tmp_path / "result"), "--items", items]
    _, out = run(tmp_path, *args)
    first = [(out / f).read_bytes() for f in ("metrics.json", "metrics.md", "metrics.png")]
    run(tmp_path, *args)
    assert first == [(out / f).read_bytes() for f in ("metrics.json", "metrics.md", "metrics.png")]


def test_whitespace_counts_only_under_exact_matching(case):
    tmp_path, _, truth = case
    padded = write_jsonl(tmp_path / "p.jsonl", [f" {o} " for o in ranked(truth, lambda i: 1)])
    trim, _ = run(tmp_path, "--predictions", str(padded), "--no-baselines")
    exact, _ = run(tmp_path, "--predictions", str(padded), "--no-baselines", "--match", "exact")
    assert trim["rows"][0]["metrics"]["HR@1"]["value"] == 1.0
    assert exact["rows"][0]["metrics"]["HR@1"]["value"] == 0.0 and exact["match"] == "exact"


def test_baselines_rank_as_designed():
    _, truth = build_test(n_users=1500, seed=1)
    cands = [c for _, c in truth]
    sets, targets = [set(c) for c in cands], [t for t, _ in truth]
    hr5 = score_table(random_outputs(cands, seed=0), targets, sets, "trim")[:, METRICS.index("HR@5")]
    assert 0.13 < hr5.mean() < 0.20  # 5 / 30 expected
    counts = {t: i % 5 for i, t in enumerate(TITLES)}  # many ties
    pop, share = popularity_outputs(cands, counts, seed=0)
    assert share == 1.0
    for out, c in zip(pop, cands):
        got = [counts[t] for t in out.split("||")]
        assert got == sorted((counts[t] for t in c), reverse=True)[:5]
    assert pop == popularity_outputs(cands, counts, seed=0)[0]
    assert pop != popularity_outputs(cands, counts, seed=1)[0]  # ties among equal counts: seeded


def test_popularity_by_hand():
    counts = {"a": 1, "b": 5, "c": 3, "d": 5, "e": 0}
    (out,), share = popularity_outputs([["a", "b", "c", " d ", "e", "f"]], counts, seed=0)
    top = out.split("||")
    assert set(top[:2]) == {"b", " d "} and top[2:4] == ["c", "a"] and top[4] in ("e", "f")
    assert share == pytest.approx(5 / 6)


def test_content_by_hand():
    # distinct titles (history + candidates): "Red Kite", "Blue Box", "Blue Kite", "Red Ball", "Green Cup",
    # "Kite Kit": N = 6; df: red 2, kite 3, blue 2, box 1, ball 1, green 1, cup 1, kit 1
    history = [["Red Kite", "Blue Box"]]
    cands = [["Blue Kite", "Red Ball", "Green Cup", "Kite Kit"]]
    idf = {w: math.log(6 / df) for w, df in {"red": 2, "kite": 3, "blue": 2}.items()}
    scores = {"Blue Kite": idf["blue"] + idf["kite"], "Red Ball": idf["red"], "Green Cup": 0.0,
              "Kite Kit": idf["kite"]}
    expected = sorted(scores, key=lambda t: -scores[t])
    assert expected == ["Blue Kite", "Red Ball", "Kite Kit", "Green Cup"]
    (out,) = content_outputs(history, cands, seed=0)
    assert out.split("||") == expected


def test_content_ties_are_broken_by_the_seed():
    history, cands = [["Red Kite"]], [["Red Ball", "Red Cup", "Green Cup", "Blue Mug"]]
    firsts = {content_outputs(history, cands, seed=s)[0].split("||")[0] for s in range(20)}
    assert firsts == {"Red Ball", "Red Cup"}  # equal scores: either, depending on the seed
    assert content_outputs(history, cands, seed=3) == content_outputs(history, cands, seed=3)


def test_content_weighs_rare_words_above_common_ones():
    others = [f"Acme Thing {i}" for i in range(20)]  # "acme" is in almost every title: low idf
    cands = [["Acme Mug", "Zorblax Mug", *others]]
    (out,) = content_outputs([["Acme Zorblax Lamp"]], cands, seed=0)
    assert out.split("||")[0] == "Zorblax Mug"


@pytest.mark.parametrize("mutate, message", [
    (lambda p: p.write_text(p.read_text().split("\n", 1)[1]), "lines but the test file has"),
    (lambda p: p.write_text("not json\n" + p.read_text()), "not valid JSON"),
    (lambda p: p.write_text(p.read_text().replace("\n", "\n\n", 1)), "blank line"),
    (lambda p: p.write_text(p.read_text().replace('"id": 3,', '"id": 4,')), "does not match line index"),
])
def test_misaligned_predictions_are_errors(case, mutate, message):
    tmp_path, _, _ = case
    pred = tmp_path / "result" / "perfect" / "output.jsonl"
    mutate(pred)
    with pytest.raises(UserError, match=message):
        run(tmp_path, "--predictions", str(pred))
    assert not (tmp_path / "report").exists()


def test_label_mismatch_means_misaligned(case):
    tmp_path, _, truth = case
    rows = [{"predict": "x", "label": t} for t, _ in truth]
    rows[0], rows[1] = rows[1], rows[0]
    with pytest.raises(UserError, match="label does not match"):
        run(tmp_path, "--predictions", str(write_jsonl(tmp_path / "lf.jsonl", rows)))


def test_bad_names_and_items(case):
    tmp_path, _, _ = case
    pred = str(tmp_path / "result" / "perfect" / "output.jsonl")
    with pytest.raises(UserError, match="names for"):
        run(tmp_path, "--predictions", pred, "--names", "a", "b")
    with pytest.raises(UserError, match="unknown name 'nope'"):
        run(tmp_path, "--predictions", pred, "--compare", "perfect", "nope")
    other = write_jsonl(tmp_path / "other.items.jsonl", [{"title": "Zzz", "train_count": 3}])
    with pytest.raises(UserError, match="items file of this test file's domain"):
        run(tmp_path, "--predictions", pred, "--items", str(other))


def test_cli_one_line_error_for_a_test_file_without_answers(case):
    tmp_path, test, _ = case
    rows = [json.loads(x) for x in test.read_text().splitlines()]
    for r in rows:
        r["messages"] = r["messages"][:2]
    write_jsonl(test, rows)
    proc = subprocess.run([sys.executable, "-m", "metric.metric", "--test-file", str(test),
                           "--pred-dir", str(tmp_path / "result"), "--out-dir", str(tmp_path / "report")],
                          cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "has no assistant answer" in proc.stderr
    assert not (tmp_path / "report").exists()


def test_shell_script_wires_the_paths(case):
    tmp_path, test, _ = case
    env = {"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "TARGET": "beauty", "TEST_FILE": str(test),
           "PRED_DIR": str(tmp_path / "result"), "ITEMS": str(tmp_path / "traindata" / "beauty.items.jsonl"),
           "REPORT_DIR": str(tmp_path / "sh"), "COMPARE": "half perfect", "BOOTSTRAP": "100"}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "metric.sh")], env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    rep = json.loads((tmp_path / "sh" / "metrics.json").read_text())
    assert [r["name"] for r in rep["rows"]] == ["half", "perfect", "random", "content", "popularity"]
    assert [(c["a"], c["b"]) for c in rep["comparisons"]] == [("half", "perfect")]
    assert rep["comparisons"][0]["metrics"]["NDCG@1"]["diff"] == pytest.approx(-0.5)


def test_reference_direction_no_bootstrap_and_unreachable_answers(case):
    tmp_path, test, _ = case
    rows = [json.loads(x) for x in test.read_text().splitlines()]
    rows[0]["messages"][2]["content"] = "Not a candidate||x"
    write_jsonl(test, rows)
    rep, out = run(tmp_path, "--pred-dir", str(tmp_path / "result"), "--reference", "random", "--bootstrap", "0")
    assert [(c["a"], c["b"]) for c in rep["comparisons"]] == [("half", "random"), ("perfect", "random"),
                                                              ("content", "random")]
    perfect = {r["name"]: r["metrics"] for r in rep["rows"]}["perfect"]
    assert perfect["HR@1"] == {"value": pytest.approx(79 / 80), "low": None, "high": None}
    assert rep["comparisons"][1]["metrics"]["HR@1"]["p"] is None
    assert any("1 test lines have an answer that is not among their candidates" in n for n in rep["notes"])
    assert "Intervals: none" in (out / "metrics.md").read_text()
