"""Items and sequences: clean unique titles, dropping untitled items, 5-core, chronological sequences."""

import html
import re
from collections import Counter, defaultdict
from operator import itemgetter

from common.cli import UserError
from common.prompt import SEP

PIPES = re.compile(r"\|+")
MIN_SEQUENCE = 3  # a user needs a test target, a validation target and one history item


def clean_title(raw):
    """HTML entities unescaped, whitespace collapsed, `||` impossible; None if nothing is left.

    Every run of `|` becomes ` | ` and none is left at either end, so titles joined by `||`
    always split back into the same titles.
    """
    if raw is None:
        return None
    text = PIPES.sub(" | ", html.unescape(raw))
    text = " ".join(text.split()).strip(" |")
    assert SEP not in text
    return text or None


def disambiguate(titles, brands):
    """Make titles unique, deterministically: colliding titles get ` (brand)`, then ` (asin)`.

    Args: titles, brands: {asin: clean title}, {asin: clean brand or None}, in item order.
    Returns: ({asin: unique title}, number of items renamed).
    """
    out = dict(titles)
    renamed = set()
    for round_ in range(3):
        groups = defaultdict(list)
        for asin, title in out.items():
            groups[title].append(asin)
        clashes = [asins for asins in groups.values() if len(asins) > 1]
        if not clashes:
            return out, len(renamed)
        for asins in clashes:
            brand_count = Counter(brands.get(a) for a in asins)
            for asin in asins:
                brand = brands.get(asin)
                use_brand = round_ == 0 and brand and brand_count[brand] == 1 and brand not in out[asin]
                out[asin] = f"{out[asin]} ({brand if use_brand else asin})"
                renamed.add(asin)
    raise UserError("could not make item titles unique")  # unreachable: asins are unique


def kcore(users, items, k=5):
    """Indices of interactions kept by iterative k-core filtering (users and items with >= k)."""
    keep = list(range(len(users)))
    while True:
        ucount = Counter(users[i] for i in keep)
        icount = Counter(items[i] for i in keep)
        kept = [i for i in keep if ucount[users[i]] >= k and icount[items[i]] >= k]
        if len(kept) == len(keep):
            return keep
        keep = kept


def sequences(users, items, times, keep):
    """{user: [item, ...]} in time order; equal times keep the review file's line order.

    Users come in order of first appearance among the kept lines. Sorting is stable, so the
    tie-break for equal timestamps is the order of the lines in the review file.
    """
    by_user = defaultdict(list)
    for i in keep:
        by_user[users[i]].append((times[i], items[i]))
    return {u: [item for _, item in sorted(pairs, key=itemgetter(0))] for u, pairs in by_user.items()}


def cap_words(title, max_words):
    """The first `max_words` words of a clean title (all of them when max_words is 0)."""
    words = title.split(" ")
    return title if not max_words or len(words) <= max_words else " ".join(words[:max_words]).strip(" |")


def clean_items(asins, meta, max_words=0):
    """Clean titles and brands of the asins (first-appearance order); those without a title are left out.
    With `max_words`, a title keeps its first max_words words (a few Amazon "titles" are whole
    descriptions of thousands of characters); which items exist does not depend on it.

    Returns: (titles {asin: title}, brands {asin: brand}, counts of items without meta / without title).
    """
    titles, brands, no_meta, no_title = {}, {}, 0, 0
    for asin in dict.fromkeys(asins):
        if asin not in meta:
            no_meta += 1
            continue
        raw_title, raw_brand = meta[asin]
        title = clean_title(raw_title)
        if title is None:
            no_title += 1
            continue
        titles[asin] = cap_words(title, max_words)
        brands[asin] = clean_title(raw_brand)
    return titles, brands, no_meta, no_title
