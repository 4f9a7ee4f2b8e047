"""WeaveRec samples by leave-one-out: which (user, position) pairs to build, and how to render one.

A user's items i_0..i_{n-1} (0-based) give: the test sample (target i_{n-1}), the validation
sample (target i_{n-2}) and training samples (targets i_1..i_{n-3}). The sample with target i_k
shows the most recent `history` items of i_0..i_{k-1} and 30 candidates: the target plus 29
distinct negatives drawn uniformly from the items outside i_0..i_k, shuffled. The answer is the
target, then the first 4 negatives drawn (reference-behaviour.md, with its sampling defects fixed).
"""

import numpy as np

from common.cli import UserError
from common.prompt import TOP_K, make_sample


def train_positions(lengths, count, rng):
    """`count` training (user index, k) pairs drawn without replacement from all of them, in draw order."""
    per_user = np.maximum(np.asarray(lengths, dtype=np.int64) - 3, 0)
    offsets = np.concatenate([[0], np.cumsum(per_user)])
    total = int(offsets[-1])
    picks = rng.choice(total, size=min(count, total), replace=False) if total else np.zeros(0, np.int64)
    users = np.searchsorted(offsets, picks, side="right") - 1
    return [(int(u), int(p - offsets[u]) + 1) for u, p in zip(users, picks)], total


class SampleBuilder:
    """Renders samples from id sequences; `titles[i]` is item i's title."""

    def __init__(self, titles, history=20, candidates=30):
        if candidates < TOP_K:
            raise UserError(f"--candidates must be at least {TOP_K}")
        if history < 0:
            raise UserError("--history must be 0 (all items) or positive")
        self.titles, self.history, self.candidates = titles, history, candidates

    def negatives(self, excluded, rng):
        """candidates-1 distinct item ids outside `excluded`, by seeded rejection sampling."""
        need, n = self.candidates - 1, len(self.titles)
        if n - len(excluded) < need:
            raise UserError(f"only {n} items: too few for {self.candidates} candidates "
                            f"outside a history of {len(excluded) - 1}")
        chosen, seen = [], set(excluded)
        while len(chosen) < need:
            for item in rng.integers(0, n, size=2 * need + 8).tolist():
                if item not in seen:
                    seen.add(item)
                    chosen.append(item)
                    if len(chosen) == need:
                        break
        return chosen

    def build(self, seq, k, rng):
        """The sharegpt sample whose target is seq[k]."""
        target, prefix = seq[k], seq[:k]
        excluded = set(prefix)
        excluded.add(target)
        negs = self.negatives(excluded, rng)
        cands = negs + [target]
        order = rng.permutation(len(cands)).tolist()
        shown = prefix[-self.history:] if self.history else prefix
        titles = self.titles
        return make_sample([titles[i] for i in shown], [titles[cands[j]] for j in order],
                           [titles[target]] + [titles[i] for i in negs[:TOP_K - 1]])
