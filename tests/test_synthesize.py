"""The embedded synthetic data: raw 2014-layout files that the real processing reads, 5-core,
deterministic, with a learnable text signal and an agreement knob that moves transfer both ways."""

import ast
import collections
import gzip
import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from common.cli import run_main
from data_process import synthesize
from data_process.synthesize import COLOURS, main

REPO = Path(__file__).resolve().parents[1]
CATEGORIES = {"sports": "Sports_and_Outdoors", "beauty": "Beauty", "toys": "Toys_and_Games"}
SMALL = ["--users", "1500", "--items", "600"]


def generate(out_dir, *extra, size=SMALL):
    assert main(["--out-dir", str(out_dir), *size, *extra]) == 0
    return out_dir


@pytest.fixture(scope="module")
def default_data(tmp_path_factory):
    """Small data with the default knobs (target sports, beauty=+1, toys=-1)."""
    return generate(tmp_path_factory.mktemp("synthetic"))


def read_domain(raw_dir, domain):
    """(meta rows, review rows) parsed as the real files are: JSON lines, Python literals."""
    cat = CATEGORIES[domain]
    with gzip.open(raw_dir / f"meta_{cat}.json.gz", "rt", encoding="utf-8") as f:
        meta = [ast.literal_eval(line) for line in f]
    with gzip.open(raw_dir / f"reviews_{cat}_5.json.gz", "rt", encoding="utf-8") as f:
        reviews = [json.loads(line) for line in f]
    return meta, reviews


def sequences(raw_dir, domain):
    """{reviewerID: [title, ...] in time order}."""
    meta, reviews = read_domain(raw_dir, domain)
    titles = {m["asin"]: m["title"] for m in meta}
    seqs = collections.defaultdict(list)
    for r in reviews:
        seqs[r["reviewerID"]].append((r["unixReviewTime"], titles[r["asin"]]))
    return {u: [t for _, t in sorted(s)] for u, s in sorted(seqs.items())}


def colour(title):
    (word,) = [w for w in title.lower().split() if w in COLOURS]
    return COLOURS.index(word)


def hit_rates(seqs, seed=0, k=30):
    """HR@1 of rankers on leave-last-out samples with k candidates (target + random others)."""
    rng = np.random.default_rng(seed)
    items = sorted({t for s in seqs.values() for t in s})
    pop = collections.Counter(t for s in seqs.values() for t in s[:-2])
    hits = collections.Counter()
    for s in seqs.values():
        history, target = s[:-1][-10:], s[-1]
        others = [t for t in items if t not in s]
        cands = [target] + list(rng.choice(others, k - 1, replace=False))
        words = collections.Counter(w for t in history for w in t.lower().split())
        tie = rng.random(k)
        scores = {"overlap": [sum(words[w] for w in set(c.lower().split())) for c in cands],
                  "popularity": [pop[c] for c in cands], "random": [0] * k}
        for name, score in scores.items():
            hits[name] += min(range(k), key=lambda i: (-score[i], tie[i])) == 0
    return {name: hits[name] / len(seqs) for name in scores}


def transition_table(seqs):
    """Colour -> next colour counts: the sequential rule 'learned' on a domain."""
    table = np.zeros((len(COLOURS), len(COLOURS)))
    for s in seqs.values():
        for a, b in zip(s[:-1], s[1:]):
            table[colour(a), colour(b)] += 1
    return table


def rule_likelihood(source, target):
    """Mean probability that the source's rule P(next colour | colour before) gives the colour
    of each target user's last item."""
    table = transition_table(source) + 1.0
    table /= table.sum(axis=1, keepdims=True)
    return np.mean([table[colour(s[-2]), colour(s[-1])] for s in target.values()])


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    tiny = ["--users", "300", "--items", "64"]
    runs = (("a", "3"), ("b", "3"), ("c", "4"))
    a, b, c = (generate(tmp_path / n, "--seed", s, size=tiny) for n, s in runs)
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted([f"meta_{c}.json.gz" for c in CATEGORIES.values()]
                           + [f"reviews_{c}_5.json.gz" for c in CATEGORIES.values()])
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
        assert (a / name).read_bytes() != (c / name).read_bytes(), name
    generate(a, "--seed", "3", size=tiny)  # a rerun over existing files gives the same bytes
    assert all((a / n).read_bytes() == (b / n).read_bytes() for n in names)


@pytest.mark.parametrize("domain", sorted(CATEGORIES))
def test_files_read_like_real_data_and_are_5core(default_data, domain):
    meta, reviews = read_domain(default_data, domain)
    assert set(meta[0]) >= {"asin", "title", "brand", "categories"}
    assert set(reviews[0]) >= {"reviewerID", "asin", "unixReviewTime", "reviewTime"}
    titles = [m["title"] for m in meta]
    assert len(set(titles)) == len(titles) and len({m["asin"] for m in meta}) == len(meta)
    assert all(3 <= len(t.split()) <= 6 and "||" not in t for t in titles)
    assert all(len([w for w in t.lower().split() if w in COLOURS]) == 1 for t in titles)
    item_counts = collections.Counter(r["asin"] for r in reviews)
    assert set(item_counts) == {m["asin"] for m in meta} and min(item_counts.values()) >= 5
    by_user = collections.defaultdict(list)
    for r in reviews:
        by_user[r["reviewerID"]].append(r)
        day = datetime.fromtimestamp(r["unixReviewTime"], timezone.utc)
        assert r["reviewTime"] == f"{day.month:02d} {day.day}, {day.year}"
    for rows in by_user.values():
        assert len(rows) >= 5 and len({r["asin"] for r in rows}) == len(rows)
        times = [r["unixReviewTime"] for r in rows]
        assert all(a < b for a, b in zip(times, times[1:]))


def test_users_overlap_across_domains_in_part(default_data):
    users = {d: set(sequences(default_data, d)) for d in CATEGORIES}
    shared = users["sports"] & users["beauty"] & users["toys"]
    assert 0.2 * len(users["sports"]) < len(shared) < len(users["sports"])


def test_real_processing_stage_reads_the_files(default_data, tmp_path):
    cmd = [sys.executable, "-m", "data_process.process", "--raw-dir", str(default_data),
           "--domain", "toys", "--train-dir", str(tmp_path / "train"), "--test-dir",
           str(tmp_path / "test"), "--train-samples", "300", "--test-users", "50", "--history", "10"]
    subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO)
    stats = json.loads((tmp_path / "train" / "toys.stats.json").read_text())
    meta, reviews = read_domain(default_data, "toys")
    assert (stats["items"], stats["interactions"]) == (len(meta), len(reviews))
    assert stats["users"] == len({r["reviewerID"] for r in reviews})
    assert sum(1 for _ in open(tmp_path / "test" / "toys.jsonl")) == 50


@pytest.mark.parametrize("domain", sorted(CATEGORIES))
def test_history_words_predict_the_next_item_where_the_rule_is_stay(default_data, domain):
    rates = hit_rates(sequences(default_data, domain))
    assert rates["random"] < 0.06
    assert rates["popularity"] > 1.3 * rates["random"]
    if domain != "toys":  # the 'stay' rule: history words beat popularity by far
        assert rates["overlap"] > 0.1 and rates["overlap"] > 3 * rates["random"]
        assert rates["overlap"] > 2 * rates["popularity"]
    else:  # 'move on': the next colour is not in the history, so its words mislead
        assert rates["overlap"] < rates["popularity"]


def test_agreement_sets_whether_the_source_rule_helps_or_conflicts(default_data, tmp_path):
    target = sequences(default_data, "sports")
    chance = 1 / len(COLOURS)
    # the target's rule is 'stay': the next item shares its colour word with the one before
    assert np.mean([colour(s[-2]) == colour(s[-1]) for s in target.values()]) > 0.6
    same = rule_likelihood(target, target)
    assert same > 8 * chance
    assert rule_likelihood(sequences(default_data, "beauty"), target) > 0.9 * same
    assert rule_likelihood(sequences(default_data, "toys"), target) < 0.7 * chance
    # the conflicting rule 'move on': the next colour is the one after the last in the cycle
    toys = sequences(default_data, "toys").values()
    assert np.mean([colour(s[-1]) == (colour(s[-2]) + 1) % len(COLOURS) for s in toys]) > 0.6
    assert np.mean([colour(s[-1]) in {colour(t) for t in s[-11:-1]} for s in toys]) < 0.25
    mixed = generate(tmp_path / "mixed", "--agreement", "beauty=0", "toys=0.5")
    assert 0.8 * chance < rule_likelihood(sequences(mixed, "beauty"), target) < 1.25 * chance
    assert 2 * chance < rule_likelihood(sequences(mixed, "toys"), target) < 0.8 * same


def test_vocabularies_keep_colour_words_unambiguous():
    colours = set(COLOURS)
    for domain, (_, brands, types) in synthesize.VOCAB.items():
        words = brands.lower().split() + " ".join(types.split("|")).lower().split()
        words += " ".join(synthesize.VARIANTS).lower().split()
        assert not colours & set(words), domain


@pytest.mark.parametrize("bad", [
    ["--agreement", "toys=2"],
    ["--agreement", "toys"],
    ["--agreement", "sports=1"],
    ["--agreement", "clothing=1"],
    ["--domains", "sports", "movies"],
    ["--domains", "beauty", "toys"],
    ["--min-len", "4"],
    ["--carry", "1.5"],
])
def test_bad_arguments_give_one_line_error_and_no_files(tmp_path, capsys, bad):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        run_main(main, ["--out-dir", str(out), *SMALL, *bad])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert not out.exists()


def test_script_runs_the_stage_with_its_path_variables(tmp_path):
    env = {**os.environ, "SYNTH_DIR": str(tmp_path / "raw"), "N_USERS": "100", "N_ITEMS": "32",
           "DOMAINS": "sports toys", "AGREEMENT": "toys=0.5", "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(REPO / "scripts" / "synthesize_data.sh")], env=env,
                          cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "toys: agreement +0.50" in done.stdout
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == [
        "meta_Sports_and_Outdoors.json.gz", "meta_Toys_and_Games.json.gz",
        "reviews_Sports_and_Outdoors_5.json.gz", "reviews_Toys_and_Games_5.json.gz"]
