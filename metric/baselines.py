r"""Sanity baselines built from the data alone, written as top-5 answers so they share the metric code.

- random: each prompt's candidates in a seeded random order (expected NDCG@1 = HR@1 = 1/30).
- popularity: candidates sorted by train_count (interactions inside the domain's training prefixes,
  from traindata/<d>.items.jsonl), most popular first;
- content: candidates sorted by the IDF-weighted overlap of their title words with the words of the
  prompt's history titles (no learning): score(c) = sum of idf(w) over the distinct words w of c
  that occur in the history, idf(w) = log(N / df(w)) over the N distinct titles of the test file
  (histories and candidates), df(w) = how many of them hold w; words are lower-cased \w+ runs.
Ties are broken by a seeded random key per candidate, so equal scores are ordered at random but
reproducibly.
"""

import math
import re
from collections import Counter

import numpy as np

from common.cli import UserError
from common.io import read_jsonl
from common.prompt import SEP, TOP_K

MIN_MATCHED = 0.5  # below this share of candidate titles found, the items file is for another domain


def random_outputs(candidate_lists, seed):
    """One answer per prompt: TOP_K of its candidates drawn in a seeded random order."""
    rng = np.random.default_rng([seed, 3])
    outputs = []
    for cands in candidate_lists:
        order = rng.permutation(len(cands))[:TOP_K]
        outputs.append(SEP.join(cands[i] for i in order))
    return outputs


def load_item_counts(path):
    """title (trimmed) -> train_count from an items file; items sharing a title add up."""
    counts = {}
    for lineno, row in enumerate(read_jsonl(path, "items file"), 1):
        if not isinstance(row, dict) or "title" not in row or "train_count" not in row:
            raise UserError(f"{path}:{lineno}: an items line needs 'title' and 'train_count'")
        title = str(row["title"]).strip()
        counts[title] = counts.get(title, 0) + int(row["train_count"])
    return counts


def popularity_outputs(candidate_lists, counts, seed):
    """One answer per prompt: its TOP_K candidates with the highest train_count.

    Returns:
        (outputs, share of candidate titles found in `counts`); a title not found counts 0.
    """
    rng = np.random.default_rng([seed, 4])
    outputs, found, total = [], 0, 0
    for cands in candidate_lists:
        pop = np.array([counts.get(c.strip(), -1) for c in cands], dtype=np.float64)
        found += int((pop >= 0).sum())
        total += len(cands)
        tie_key = rng.random(len(cands))
        order = np.lexsort((tie_key, -np.maximum(pop, 0)))[:TOP_K]
        outputs.append(SEP.join(cands[i] for i in order))
    share = found / total if total else 0.0
    if share < MIN_MATCHED:
        raise UserError(f"only {share:.0%} of the test candidates are titles in the items file: "
                        "is it the items file of this test file's domain?")
    return outputs, share


def title_words(title):
    """The distinct lower-cased word runs of a title."""
    return set(re.findall(r"\w+", title.lower()))


def idf_weights(titles):
    """word -> log(N / df) over the distinct `titles`."""
    distinct = {t.strip() for t in titles}
    df = Counter(w for t in distinct for w in title_words(t))
    n = len(distinct)
    return {w: math.log(n / c) for w, c in df.items()}


def content_outputs(histories, candidate_lists, seed):
    """One answer per prompt: its TOP_K candidates with the most IDF-weighted word overlap with the
    prompt's history titles (see the module docstring)."""
    idf = idf_weights([t for h in histories for t in h] + [c for cands in candidate_lists for c in cands])
    rng = np.random.default_rng([seed, 5])
    outputs = []
    for history, cands in zip(histories, candidate_lists):
        seen = set().union(*(title_words(t) for t in history)) if history else set()
        score = np.array([sum(idf[w] for w in title_words(c) & seen) for c in cands])
        tie_key = rng.random(len(cands))
        order = np.lexsort((tie_key, -score))[:TOP_K]
        outputs.append(SEP.join(cands[i] for i in order))
    return outputs
