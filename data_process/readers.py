"""Streaming readers for Amazon review data: the 2014 and 2018 file layouts, one pass per file.

Layouts (CATEGORY is e.g. `Beauty`, see common/domains.py):
- 2014: `reviews_<CATEGORY>_5.json.gz` (JSON lines) + `meta_<CATEGORY>.json.gz` (one Python dict
  literal a line, parsed with `ast.literal_eval`, never `eval`);
- 2018: `<CATEGORY>_5.json.gz` + `meta_<CATEGORY>.json.gz`, both JSON lines.

Bad input policy:
- stops the run (one-line error): a missing, empty, non-gzip, truncated or non-UTF-8 file, a file
  with no usable line, or more bad lines than `max_bad_fraction` of a file's lines;
- skipped with a warning and a count: a few bad lines (not JSON / not a literal, not an object,
  missing `reviewerID`, `asin` or `unixReviewTime`), at most `max_bad_fraction` of the lines.
"""

import ast
import gzip
import json
import os
import re
import sys
import zlib

from common.cli import UserError
from common.domains import RELEASES, release_files
# cheap look at a meta line's asin, so lines of items outside the review file are never parsed
ASIN_RE = re.compile(r"""['"]asin['"]\s*:\s*['"]([^'"\\]+)['"]""")


def raw_files(raw_dir, category):
    """(reviews path, meta path) of a category in either layout (2014 first); UserError if one is missing."""
    found = release_files(category, raw_dir)
    if not found:
        names = " or ".join(reviews.format(category) for _, reviews, _ in RELEASES.values())
        raise UserError(f"no review file for {category} in {raw_dir} (expected {names}; "
                        "run data_process.download)")
    _, reviews, meta = found[0]
    reviews, meta = os.path.join(raw_dir, reviews), os.path.join(raw_dir, meta)
    if not os.path.isfile(meta):
        raise UserError(f"no metadata file {meta} (run data_process.download)")
    return reviews, meta


def gzip_lines(path):
    """Yield (line number, text) of a gzip text file; UserError if it is not gzip, truncated or not UTF-8."""
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            yield from enumerate(f, 1)
    except gzip.BadGzipFile:
        raise UserError(f"{path}: not a gzip file") from None
    except EOFError:
        raise UserError(f"{path}: truncated gzip (the file ends early; download it again)") from None
    except zlib.error as err:
        raise UserError(f"{path}: corrupt gzip ({err})") from None
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None


class BadLines:
    """Counts a file's bad lines; check() skips a few with a warning and stops on more."""

    def __init__(self, path, max_fraction):
        self.path, self.max_fraction = path, max_fraction
        self.count, self.first = 0, None

    def add(self, lineno, why):
        self.count += 1
        if self.first is None:
            self.first = f"{self.path}:{lineno}: {why}"

    def check(self, total):
        if total == 0:
            raise UserError(f"{self.path}: empty file (no lines)")
        if not self.count:
            return
        allowed = int(self.max_fraction * total)
        if self.count > allowed:
            raise UserError(f"{self.first} ({self.count} bad of {total} lines; at most {allowed} "
                            f"may be skipped, see --max-bad-fraction)")
        print(f"warning: skipped {self.count} bad of {total} lines in {self.path} "
              f"(first: {self.first})", file=sys.stderr)


def _review(line):
    """(reviewerID, asin, unixReviewTime) of a review line, or a string saying what is wrong."""
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as err:
        return f"not valid JSON ({err.msg})"
    if not isinstance(rec, dict):
        return "not a JSON object"
    user, asin, time = rec.get("reviewerID"), rec.get("asin"), rec.get("unixReviewTime")
    for key, value in (("reviewerID", user), ("asin", asin)):
        if not isinstance(value, str) or not value:
            return f"missing '{key}'"
    if isinstance(time, bool) or not isinstance(time, (int, float)):
        return "missing 'unixReviewTime'"
    return user, asin, int(time)


def read_reviews(path, max_bad_fraction=0.001):
    """Interactions in file order: lists (reviewerIDs, asins, unix times) and the bad-line count."""
    users, asins, times = [], [], []
    bad, total = BadLines(path, max_bad_fraction), 0
    for lineno, line in gzip_lines(path):
        if not line.strip():
            continue
        total += 1
        rec = _review(line)
        if isinstance(rec, str):
            bad.add(lineno, rec)
            continue
        users.append(rec[0])
        asins.append(rec[1])
        times.append(rec[2])
    bad.check(total)
    return users, asins, times, bad.count


def parse_meta_line(line):
    """A meta line as a dict: JSON (2018) or a Python literal (2014), never evaluated as code."""
    try:
        rec = json.loads(line)
    except json.JSONDecodeError:
        try:
            rec = ast.literal_eval(line.strip())
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return "neither JSON nor a Python literal"
    return rec if isinstance(rec, dict) else "not a dict"


def read_meta(path, wanted, max_bad_fraction=0.001):
    """{asin: (raw title or None, raw brand or None)} for the asins in `wanted`; the bad-line count.

    The first line of an asin that carries a title wins (2018 meta files repeat some items).
    """
    meta, bad, total = {}, BadLines(path, max_bad_fraction), 0
    for lineno, line in gzip_lines(path):
        if not line.strip():
            continue
        total += 1
        match = ASIN_RE.search(line)
        if match and match.group(1) not in wanted:
            continue
        rec = parse_meta_line(line)
        if isinstance(rec, str):
            bad.add(lineno, rec)
            continue
        asin = rec.get("asin")
        if not isinstance(asin, str) or not asin:
            bad.add(lineno, "missing 'asin'")
            continue
        if asin in wanted and (asin not in meta or meta[asin][0] is None):
            meta[asin] = (_text(rec.get("title")), _text(rec.get("brand")))
    bad.check(total)
    return meta, bad.count


def _text(value):
    return value if isinstance(value, str) and value.strip() else None
