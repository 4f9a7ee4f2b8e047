"""Metric functions: hand-computed cases and agreement with scikit-learn on random rankings."""

import math

import numpy as np
import pytest
from sklearn.metrics import label_ranking_average_precision_score, ndcg_score, top_k_accuracy_score

from metric.ranking import METRICS, fields, list_flags, rank_of, score_table, truth_of, user_scores

CANDS = {"t", "a", "b", "c", "d", "e", "f"}


def scores(output, truth="t", match="trim", cands=CANDS):
    return dict(zip(METRICS, user_scores(output, truth, cands, match)))


@pytest.mark.parametrize("output, rank", [
    ("t||a||b||c||d", 1),
    ("a||b||t||c||d", 3),
    ("a||b||c||d||t", 5),
    ("a||b||c||d||e", 0),
    ("a||b||c||d||e||t", 0),          # sixth position: outside the top 5
    ("", 0),                          # empty output
    ("a||a||t||b||c", 3),             # a repeat holds a position: no extra credit
    ("a||||t", 3),                    # an empty field holds a position, as in the reference split
    ("t||t||a||b||c", 1),             # the first match counts
    ("  t ||a||b||c||d", 1),          # whitespace trimmed by default
    ("a|| t\n||b||c||d", 2),
])
def test_rank_is_position_in_the_split_list(output, rank):
    assert rank_of(fields(output, "trim"), "t") == rank


def test_hand_computed_values():
    r1, r3, r5, miss = scores("t||a||b||c||d"), scores("a||b||t||c||d"), scores("a||b||c||d||t"), scores("a")
    assert (r1["NDCG@1"], r1["NDCG@3"], r1["NDCG@5"], r1["MRR"]) == (1.0, 1.0, 1.0, 1.0)
    assert (r1["HR@1"], r1["HR@3"], r1["HR@5"]) == (1.0, 1.0, 1.0)
    assert r3["NDCG@1"] == 0.0 and r3["NDCG@3"] == pytest.approx(0.5) and r3["NDCG@5"] == pytest.approx(0.5)
    assert r3["MRR"] == pytest.approx(1 / 3) and (r3["HR@1"], r3["HR@3"], r3["HR@5"]) == (0.0, 1.0, 1.0)
    assert r5["NDCG@3"] == 0.0 and r5["NDCG@5"] == pytest.approx(1 / math.log2(6))
    assert r5["MRR"] == pytest.approx(0.2) and (r5["HR@3"], r5["HR@5"]) == (0.0, 1.0)
    assert all(miss[m] == 0.0 for m in METRICS if m != "short") and miss["short"] == 1.0


def test_matching_modes():
    out = " T ||a||b||c||d"
    assert scores(out, truth=truth_of(" T ", "exact"), match="exact")["HR@1"] == 1.0   # byte-equal field
    assert scores(out, truth=truth_of("T", "exact"), match="exact")["HR@1"] == 0.0     # reference: no trim
    assert scores(out, truth=truth_of("T", "trim"), match="trim")["HR@1"] == 1.0
    assert scores(out, truth=truth_of("t", "trim"), match="trim")["HR@1"] == 0.0
    assert scores(out, truth=truth_of("t", "casefold"), match="casefold")["HR@1"] == 1.0


def test_truth_is_first_field_of_the_answer():
    assert truth_of(" t ||a||b||c||d", "trim") == "t"
    assert truth_of(" t ||a", "exact") == " t "


@pytest.mark.parametrize("output, flags", [
    ("t||a||b||c||d", (True, False, False)),
    ("t||a||b||c", (False, True, False)),            # four items
    ("", (False, True, False)),
    ("t||a||a||c||d", (False, False, True)),         # repeated
    ("t||a||b||c||zzz", (False, False, False)),      # not a candidate
    ("t||a||b||c||d||e", (False, False, False)),     # six items
    ("t||a||||c||d", (False, True, False)),          # an empty field
    (" t || a ||b||c||d", (True, False, False)),     # trimmed
])
def test_quality_flags(output, flags):
    assert list_flags(fields(output, "trim"), CANDS) == flags


def test_agrees_with_scikit_learn_on_random_rankings():
    rng = np.random.default_rng(7)
    n_users, n_cands = 400, 30
    titles = [f"item {i}" for i in range(n_cands)]
    y_score = np.stack([rng.permutation(n_cands) for _ in range(n_users)]).astype(float)
    truth_idx = rng.integers(0, n_cands, n_users)
    y_true = np.zeros((n_users, n_cands))
    y_true[np.arange(n_users), truth_idx] = 1
    outputs = ["||".join(titles[j] for j in np.argsort(-row)[:5]) for row in y_score]
    table = score_table(outputs, [titles[j] for j in truth_idx], [set(titles)] * n_users, "trim")
    col = {m: table[:, i] for i, m in enumerate(METRICS)}
    for k in (1, 3, 5):
        assert col[f"NDCG@{k}"].mean() == pytest.approx(ndcg_score(y_true, y_score, k=k), abs=1e-12)
        assert col[f"HR@{k}"].mean() == pytest.approx(
            top_k_accuracy_score(truth_idx, y_score, k=k, labels=range(n_cands)), abs=1e-12)
    rr = np.array([label_ranking_average_precision_score(y_true[i:i + 1], y_score[i:i + 1])
                   for i in range(n_users)])
    assert col["MRR"] == pytest.approx(np.where(rr >= 1 / 5 - 1e-12, rr, 0.0), abs=1e-12)
    assert 0 < col["HR@5"].mean() < 1 and col["valid"].mean() == 1.0
