"""Ranking metrics of one top-5 list against one true item, as the published WeaveRec code defines them.

A generated answer is split on `||`; the rank of the true item is the 1-based position of the first
field that matches it in that split list (reference-behaviour.md, "Metrics"). Decisions kept here, once:

- Positions are positions in the split list. Normalisation (trimming, case folding) only changes
  whether a field matches, never where it sits: an empty field (`a||||t`) still takes a position, a
  repeated title takes a position each time it appears, so repeats never earn extra credit and an
  item repeated before the true one pushes it down, exactly as the reference's `list.index` does.
- Only the first TOP_K (5) positions count: a true item at position 6 is a miss for every metric.
- Matching modes: "exact" (the reference: fields compared byte for byte), "trim" (default: leading
  and trailing whitespace ignored on both sides), "casefold" (trim, then Unicode case folding).
- The true item is the first `||` field of the reference answer, normalised the same way.
"""

import math

import numpy as np

from common.prompt import SEP, TOP_K

MATCH_MODES = ("exact", "trim", "casefold")
RANK_METRICS = ("NDCG@1", "NDCG@3", "NDCG@5", "MRR", "HR@1", "HR@3", "HR@5")
RATE_METRICS = ("valid", "short", "repeated")
METRICS = RANK_METRICS + RATE_METRICS


_NORMALISERS = {"exact": lambda t: t, "trim": str.strip, "casefold": lambda t: t.strip().casefold()}


def normaliser(match):
    """The function that maps a title to its compared form under a matching mode."""
    try:
        return _NORMALISERS[match]
    except KeyError:
        raise ValueError(f"unknown match mode {match!r}; use one of {MATCH_MODES}") from None


def normalise(title, match):
    """A title as compared under a matching mode (see the module docstring)."""
    return normaliser(match)(title)


def fields(text, match):
    """The answer's `||` fields, normalised, in place (empty fields kept: they hold positions)."""
    norm = normaliser(match)
    return [norm(f) for f in text.split(SEP)]


def truth_of(answer, match):
    """The true item: the first `||` field of the reference answer."""
    return normalise(answer.split(SEP)[0], match)


def rank_of(pred_fields, truth, k=TOP_K):
    """1-based position of the first field equal to `truth` among the first k; 0 for a miss."""
    for pos, field in enumerate(pred_fields[:k], 1):
        if field == truth:
            return pos
    return 0


def ndcg_at(rank, k):
    """NDCG@k with one relevant item: 1 / log2(rank + 1) if 1 <= rank <= k, else 0 (IDCG = 1)."""
    return 1.0 / math.log2(rank + 1) if 1 <= rank <= k else 0.0


def reciprocal_rank(rank, k=TOP_K):
    """MRR term: 1 / rank if 1 <= rank <= k, else 0."""
    return 1.0 / rank if 1 <= rank <= k else 0.0


def hit_at(rank, k):
    """HR@k term: 1 if the true item is among the first k positions, else 0."""
    return 1.0 if 1 <= rank <= k else 0.0


def list_flags(pred_fields, candidates):
    """(valid, short, repeated) of one list.

    valid: exactly TOP_K fields, all distinct, each one of the prompt's candidate titles;
    short: fewer than TOP_K non-empty fields; repeated: some non-empty title appears twice.
    """
    items = [f for f in pred_fields if f.strip()]
    repeated = len(set(items)) < len(items)
    short = len(items) < TOP_K
    valid = (len(pred_fields) == TOP_K and not short and not repeated
             and all(f in candidates for f in pred_fields))
    return valid, short, repeated


def user_scores(output, truth, candidates, match):
    """Every metric of one test line as a tuple ordered like METRICS.

    Args:
        output: the generated text (titles joined by `||`).
        truth: the true title, already normalised (truth_of).
        candidates: set of the prompt's candidate titles, already normalised.
    """
    pred = fields(output, match)
    rank = rank_of(pred, truth)
    ranked = (ndcg_at(rank, 1), ndcg_at(rank, 3), ndcg_at(rank, 5), reciprocal_rank(rank),
              hit_at(rank, 1), hit_at(rank, 3), hit_at(rank, 5))
    return ranked + tuple(float(x) for x in list_flags(pred, candidates))


def score_table(outputs, truths, candidate_sets, match):
    """Per-user metric matrix (n_users x len(METRICS), float64); its column means are the metrics."""
    rows = [user_scores(o, t, c, match) for o, t, c in zip(outputs, truths, candidate_sets)]
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), len(METRICS))
