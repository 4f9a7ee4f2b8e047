"""Bootstrap intervals cover at about the nominal rate; the paired test finds planted differences only."""

import math

import numpy as np
import pytest

from metric.stats import bootstrap_means, percentile_interval, sign_flip_pvalues


def coverage(samples, true_value, n_boot=1000, seed=0):
    """Share of columns (independent simulated test sets) whose 95% interval holds the true value."""
    low, high = percentile_interval(bootstrap_means(samples, n_boot, seed), 0.95)
    return float(np.mean((low <= true_value) & (true_value <= high)))


def test_interval_covers_a_hit_rate_at_the_nominal_rate():
    rng = np.random.default_rng(1)
    hits = (rng.random((300, 400)) < 0.3).astype(float)  # 400 test sets of 300 users
    assert 0.91 <= coverage(hits, 0.3) <= 0.98


def test_interval_covers_ndcg5_of_random_rankings():
    rng = np.random.default_rng(2)
    ranks = rng.integers(1, 31, size=(300, 400))  # the true item uniform among 30 positions
    ndcg5 = np.where(ranks <= 5, 1 / np.log2(ranks + 1), 0.0)
    true = sum(1 / math.log2(r + 1) for r in range(1, 6)) / 30
    assert 0.90 <= coverage(ndcg5, true) <= 0.98


def test_bootstrap_is_seeded_and_per_column():
    rng = np.random.default_rng(3)
    x = rng.random((500, 2))
    a = bootstrap_means(x, 200, seed=5)
    assert np.array_equal(a, bootstrap_means(x, 200, seed=5))
    assert not np.array_equal(a, bootstrap_means(x, 200, seed=6))
    # adding a column (another file in the report) leaves the first column's resamples alone
    wider = bootstrap_means(np.column_stack([x, rng.random(500)]), 200, seed=5)
    assert np.array_equal(a, wider[:, :2])
    assert np.allclose(a.mean(axis=0), x.mean(axis=0), atol=0.01)


def test_paired_test_finds_a_planted_difference():
    rng = np.random.default_rng(4)
    a = (rng.random(500) < 0.45).astype(float)
    b = (rng.random(500) < 0.30).astype(float)
    p = sign_flip_pvalues((a - b)[:, None], 2000, seed=0)[0]
    assert p < 0.01
    low, high = percentile_interval(bootstrap_means(np.column_stack([a, b]), 1000, seed=0) @ [1, -1], 0.95)
    assert 0 < low < 0.15 < high


def test_paired_test_finds_nothing_between_a_file_and_itself():
    a = (np.random.default_rng(5).random(300) < 0.4).astype(float)
    assert sign_flip_pvalues((a - a)[:, None], 1000, seed=0)[0] == 1.0
    boot = bootstrap_means(np.column_stack([a, a]), 500, seed=0)
    low, high = percentile_interval(boot[:, 0] - boot[:, 1], 0.95)
    assert low == high == 0.0


def test_paired_test_p_values_are_calibrated_under_the_null():
    rng = np.random.default_rng(6)
    diffs = (rng.random((200, 400)) < 0.3).astype(float) - (rng.random((200, 400)) < 0.3)
    p = sign_flip_pvalues(diffs, 1000, seed=1)
    assert 0.02 <= np.mean(p < 0.05) <= 0.09
    assert p.min() >= 1 / 1001


@pytest.mark.parametrize("n_users", [1, 7])
def test_tiny_test_sets_work(n_users):
    x = np.arange(n_users, dtype=float)[:, None]
    low, high = percentile_interval(bootstrap_means(x, 100, seed=0))
    assert x.min() <= low[0] <= high[0] <= x.max()
