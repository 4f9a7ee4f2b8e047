"""Uncertainty of per-user metric means: bootstrap intervals and a paired sign-flip test.

Every function takes a matrix of per-user values (rows = test users, columns = whatever is being
averaged: metrics of one or several prediction files on the same users) and works column-wise, so
many files and metrics share one pass. Randomness comes only from numpy Generators seeded by the
caller, and the resamples depend on (seed, number of users) alone: adding a file to a report does
not move another file's interval.
"""

import numpy as np
from tqdm import tqdm

CHUNK_CELLS = 4_000_000  # resamples x users per chunk: bounds memory at 30k users


def _chunks(n_resamples, n_users):
    step = max(1, CHUNK_CELLS // max(n_users, 1))
    return [(s, min(s + step, n_resamples)) for s in range(0, n_resamples, step)]


def bootstrap_means(values, n_resamples, seed, progress=False):
    """Column means of `values` on `n_resamples` bootstrap resamples of its rows (users).

    Each resample draws n users with replacement; the mean is (counts @ values) / n, where counts[b, i]
    is how often user i was drawn in resample b.

    Returns:
        float64 array (n_resamples, n_columns).
    """
    values = np.asarray(values, dtype=np.float64)
    n = values.shape[0]
    rng = np.random.default_rng([seed, 1])
    out = np.empty((n_resamples, values.shape[1]), dtype=np.float64)
    for start, stop in tqdm(_chunks(n_resamples, n), desc="bootstrap", disable=not progress):
        b = stop - start
        draws = rng.integers(0, n, size=(b, n)) + (np.arange(b) * n)[:, None]
        counts = np.bincount(draws.ravel(), minlength=b * n).reshape(b, n)
        # column by column: a matrix product over several columns may sum in another order (BLAS
        # kernels differ with the width), and a column's resamples must not depend on its neighbours
        counts = counts.astype(np.float64)
        for j in range(values.shape[1]):
            out[start:stop, j] = counts @ values[:, j] / n
    return out


def percentile_interval(boot, level=0.95):
    """Percentile bootstrap interval per column: (low, high) arrays."""
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(boot, [tail, 100 - tail], axis=0)
    return low, high


def sign_flip_pvalues(diffs, n_permutations, seed, progress=False):
    """Two-sided paired sign-flip (permutation) test of mean difference 0, per column.

    Under the null hypothesis each user's difference d_i = a_i - b_i is as likely to be -d_i, so
    the observed |mean(d)| is compared with |mean(s * d)| for random signs s in {-1, +1}. Same
    signs for every column.
    p = (1 + #{|mean(s * d)| >= |mean(d)|}) / (1 + n_permutations); a column of zeros gets p = 1.

    Returns:
        float64 array (n_columns,).
    """
    diffs = np.asarray(diffs, dtype=np.float64)
    n = diffs.shape[0]
    observed = np.abs(diffs.mean(axis=0))
    tol = 1e-12 * np.maximum(1.0, observed)  # float noise must not turn a tie into a miss
    rng = np.random.default_rng([seed, 2])
    extreme = np.zeros(diffs.shape[1], dtype=np.int64)
    for start, stop in tqdm(_chunks(n_permutations, n), desc="sign-flip", disable=not progress):
        signs = rng.integers(0, 2, size=(stop - start, n)) * 2.0 - 1.0
        flipped = np.abs(signs @ diffs / n)
        extreme += (flipped >= observed - tol).sum(axis=0)
    return (1.0 + extreme) / (1.0 + n_permutations)
