"""WeaveRec samples by leave-one-out: which (user, position) pairs to build, and how to render one.

A user's items i_0..i_{n-1} (0-based) give: the test sample (target i_{n-1}), the validation
sample (target i_{n-2}) and training samples (targets i_1..i_{n-3}). The sample with target i_k
shows the most recent `history` items of i_0..i_{k-1} and 30 candidates: the target plus 29
distinct negatives drawn uniformly from the items outside i_0..i_k, shuffled. The answer is the
target, then the first 4 negatives drawn (reference-behaviour.md, with its sampling defects fixed).
"""

import json

import numpy as np

from common.cli import UserError
from common.prompt import (
    CANDIDATES_CLOSE,
    CANDIDATES_OPEN,
    HISTORY_OPEN,
    SEP,
    SYSTEM,
    TOP_K,
    make_sample,
)


def train_positions(lengths, count, rng):
    """`count` training (user index, k) pairs drawn without replacement from all of them, in draw order."""
    per_user = np.maximum(np.asarray(lengths, dtype=np.int64) - 3, 0)
    offsets = np.concatenate([[0], np.cumsum(per_user)])
    total = int(offsets[-1])
    picks = rng.choice(total, size=min(count, total), replace=False) if total else np.zeros(0, np.int64)
    users = np.searchsorted(offsets, picks, side="right") - 1
    return [(int(u), int(p - offsets[u]) + 1) for u, p in zip(users, picks)], total


class Draws:
    """A seeded generator's uniform draws, taken in bulk and handed out in order (fast, deterministic)."""

    def __init__(self, rng, n_items, n_candidates, block=1 << 16):
        self.rng, self.n, self.m, self.block = rng, n_items, n_candidates, block
        self.ints, self.pos, self.perms = [], 0, []

    def negatives(self, excluded, need):
        """`need` distinct item ids outside `excluded`, by rejection sampling."""
        chosen, seen = [], set(excluded)
        ints, pos = self.ints, self.pos
        while len(chosen) < need:
            if pos == len(ints):
                ints, pos = self.rng.integers(0, self.n, size=self.block).tolist(), 0
                self.ints = ints
            item = ints[pos]
            pos += 1
            if item not in seen:
                seen.add(item)
                chosen.append(item)
        self.pos = pos
        return chosen

    def permutation(self):
        if not self.perms:
            keys = self.rng.random((self.block // self.m + 1, self.m))
            self.perms = keys.argsort(axis=1, kind="stable").tolist()[::-1]
        return self.perms.pop()


def _esc(text):
    """`text` escaped as inside a JSON string (as json.dumps with ensure_ascii=False writes it)."""
    return json.dumps(text, ensure_ascii=False)[1:-1]


class SampleBuilder:
    """Builds samples as item ids and renders them as jsonl lines; `titles[i]` is item i's title.

    render() writes exactly the bytes of common.io.dump_jsonl_line(common.prompt.make_sample(...)),
    escaping each title once instead of once per sample (tests check the two agree).
    """

    def __init__(self, titles, history=20, candidates=30):
        if candidates < TOP_K:
            raise UserError(f"--candidates must be at least {TOP_K}")
        if history < 0:
            raise UserError("--history must be 0 (all items) or positive")
        self.titles, self.history, self.candidates = titles, history, candidates
        self.escaped = [_esc(t) for t in titles]
        self.head = ('{"messages": [{"role": "system", "content": "' + _esc(SYSTEM) + '"}, '
                     '{"role": "user", "content": "' + _esc(HISTORY_OPEN))
        self.middle = _esc(CANDIDATES_OPEN)
        self.tail = _esc(CANDIDATES_CLOSE) + '"}, {"role": "assistant", "content": "'

    def draws(self, rng):
        return Draws(rng, len(self.titles), self.candidates)

    def build(self, seq, k, draws):
        """(history ids, candidate ids in shown order, answer ids) of the sample whose target is seq[k]."""
        target, prefix = seq[k], seq[:k]
        excluded = set(prefix)
        excluded.add(target)
        if len(self.titles) - len(excluded) < self.candidates - 1:
            raise UserError(f"only {len(self.titles)} items: too few for {self.candidates} candidates "
                            f"outside a history of {len(excluded) - 1}")
        negs = draws.negatives(excluded, self.candidates - 1)
        cands = negs + [target]
        shown = prefix[-self.history:] if self.history else prefix
        return shown, [cands[j] for j in draws.permutation()], [target] + negs[:TOP_K - 1]

    def render(self, sample, user=None, answer_items=TOP_K):
        """The sample's jsonl line (with a "user" field when `user` is given); the answer keeps its
        first `answer_items` titles (1: the target alone)."""
        esc, history, cands, answer = self.escaped, *sample
        answer = answer[:answer_items]
        line = (self.head + SEP.join([esc[i] for i in history]) + self.middle
                + SEP.join([esc[i] for i in cands]) + self.tail + SEP.join([esc[i] for i in answer]) + '"}]')
        return line + (', "user": "' + _esc(user) + '"}\n' if user is not None else "}\n")

    def sample_dict(self, sample):
        """The same sample as common.prompt.make_sample builds it."""
        history, cands, answer = ([self.titles[i] for i in ids] for ids in sample)
        return make_sample(history, cands, answer)
