"""Score prediction files against a test file: reads testdata/<d>.jsonl + result/*/output.jsonl
(+ traindata/<d>.items.jsonl), writes <out-dir>/metrics.json, metrics.md and metrics.png.

NDCG@1/3/5 and MRR as the published WeaveRec code computes them (metric/ranking.py), HR@1/3/5,
output quality rates, bootstrap intervals over test users, paired comparisons, and random and
popularity baselines and a content baseline (word overlap with the history) on the same candidates.
"""

import argparse
import os
import time

import numpy as np
from tqdm import tqdm

from common.cli import UserError, run_main
from common.io import atomic_path, read_jsonl, write_json_atomic, write_text_atomic
from common.prompt import parse_user_prompt, sample_parts
from metric import baselines, inputs, report, stats
from metric.ranking import MATCH_MODES, METRICS, score_table

LEVEL = 0.95
BASELINES = ("random", "popularity", "content")
MATCH_NOTES = {"exact": "fields compared byte for byte, as the published code does",
               "trim": "leading/trailing whitespace ignored",
               "casefold": "whitespace trimmed and case folded: looser than the published code"}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--test-file", required=True, help="testdata/<d>.jsonl (needs the assistant answers)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--predictions", nargs="+", help="prediction jsonl files, aligned with the test file")
    src.add_argument("--pred-dir", help="a result folder: every */output.jsonl and *.jsonl directly inside")
    p.add_argument("--names", nargs="+", help="one name per prediction file (default: run folder names)")
    p.add_argument("--out-dir", required=True, help="where metrics.json, metrics.md, metrics.png go")
    p.add_argument("--items", help="traindata/<d>.items.jsonl: adds the popularity baseline")
    p.add_argument("--no-baselines", action="store_true", help="no random/popularity/content rows")
    cmp = p.add_mutually_exclusive_group()
    cmp.add_argument("--compare", nargs=2, action="append", metavar=("NAME_A", "NAME_B"),
                   help="paired comparison A - B (repeatable); default: the best file vs every other row")
    cmp.add_argument("--reference", help="every other row minus this one (a merge, or 'random')")
    p.add_argument("--match", choices=MATCH_MODES, default="trim", help="title matching (default: trim)")
    p.add_argument("--seed", type=int, default=0, help="seed of baselines, bootstrap and tests")
    p.add_argument("--bootstrap", type=int, default=1000,
                   help="bootstrap resamples and sign-flip permutations (0: no intervals or p-values)")
    args = p.parse_args(argv)
    if args.bootstrap < 0:
        raise UserError("--bootstrap must be 0 or more")
    return args


def read_histories(path):
    """The history titles of every test line (the file was checked by inputs.load_test)."""
    return [parse_user_prompt(sample_parts(row)[1])[0] for row in read_jsonl(path, "test file", strict=True)]


def collect_rows(args, truths, cand_lists, cand_sets):
    """[(name, kind, file, per-user score matrix)] for the prediction files and the baselines."""
    files = args.predictions or inputs.discover(args.pred_dir)
    names = args.names or [inputs.default_name(f) for f in files]
    if len(names) != len(files):
        raise UserError(f"{len(names)} names for {len(files)} prediction files")
    taken = set(BASELINES) if not args.no_baselines else set()
    if len(set(names)) < len(names) or taken & set(names):
        raise UserError(f"prediction names must be unique and not {'/'.join(BASELINES)}: {names}"
                        " (give --names)")
    rows, notes = [], []
    big = len(files) * len(truths) > 50_000
    for name, path in tqdm(list(zip(names, files)), desc="scoring", disable=not big):
        outputs = inputs.load_predictions(path, truths, args.match)
        rows.append((name, "model", path, score_table(outputs, truths, cand_sets, args.match)))
    if not args.no_baselines:
        outputs = baselines.random_outputs(cand_lists, args.seed)
        rows.append(("random", "baseline", None, score_table(outputs, truths, cand_sets, args.match)))
        outputs = baselines.content_outputs(read_histories(args.test_file), cand_lists, args.seed)
        rows.append(("content", "baseline", None, score_table(outputs, truths, cand_sets, args.match)))
    if args.items and not args.no_baselines:
        outputs, share = baselines.popularity_outputs(cand_lists, baselines.load_item_counts(args.items),
                                                      args.seed)
        rows.append(("popularity", "baseline", args.items,
                     score_table(outputs, truths, cand_sets, args.match)))
        notes.append(f"popularity: {share:.1%} of candidate titles found in {args.items} (others count 0); "
                     "ties broken by a seeded random key")
    return rows, notes


def pairs_to_compare(args, names, best):
    """(A, B) pairs for A - B: --compare; else each row - --reference; else the best file - each row."""
    if args.compare:
        pairs = [tuple(c) for c in args.compare]
    else:
        ref = args.reference or best
        if ref is None:
            return []
        if args.reference:  # every other row minus the reference
            pairs = [(n, ref) for n in names if n != ref]
        else:  # the best file minus every other row
            pairs = [(ref, n) for n in names if n != ref]
    for a, b in pairs:
        for n in (a, b):
            if n not in names:
                raise UserError(f"unknown name '{n}' to compare (known: {', '.join(names)})")
    return pairs


def _cells(center, low, high, start, p=None, key="value"):
    """{metric: {key, low, high[, p]}} for the METRICS columns starting at `start`."""
    def at(arr, i):
        return None if arr is None else float(arr[i])
    cells = {}
    for j, m in enumerate(METRICS):
        i = start + j
        cells[m] = {key: float(center[i]), "low": at(low, i), "high": at(high, i)}
        if key == "diff":
            cells[m]["p"] = at(p, i)
    return cells


def summarise(rows, pairs, n_boot, seed):
    """Metric values with intervals per row, and paired differences with intervals and p-values.

    All rows share the same bootstrap resamples of users, so a paired interval is the percentile
    interval of the resampled difference of means; one sign-flip pass serves every comparison.
    """
    k, index = len(METRICS), {r[0]: i for i, r in enumerate(rows)}
    values = np.concatenate([r[3] for r in rows], axis=1)  # users x (rows * metrics)
    cols = [(slice(index[a] * k, index[a] * k + k), slice(index[b] * k, index[b] * k + k)) for a, b in pairs]
    means = values.mean(axis=0)
    diff_means = np.concatenate([means[sa] - means[sb] for sa, sb in cols]) if pairs else None
    low = high = dlow = dhigh = p = None
    if n_boot:
        boot = stats.bootstrap_means(values, n_boot, seed, progress=values.shape[0] > 10000)
        low, high = stats.percentile_interval(boot, LEVEL)
        if pairs:
            diffs = np.concatenate([values[:, sa] - values[:, sb] for sa, sb in cols], axis=1)
            boot_diff = np.concatenate([boot[:, sa] - boot[:, sb] for sa, sb in cols], axis=1)
            dlow, dhigh = stats.percentile_interval(boot_diff, LEVEL)
            p = stats.sign_flip_pvalues(diffs, n_boot, seed, progress=values.shape[0] > 10000)
    summaries = [{"name": name, "kind": kind, "file": path, "metrics": _cells(means, low, high, i * k)}
                 for i, (name, kind, path, _) in enumerate(rows)]
    comparisons = [{"a": a, "b": b, "metrics": _cells(diff_means, dlow, dhigh, c * k, p, key="diff")}
                   for c, (a, b) in enumerate(pairs)]
    return summaries, comparisons


def best_model(rows):
    """The prediction file (not a baseline) with the highest NDCG@1 + NDCG@3; first one on ties."""
    i1, i3 = METRICS.index("NDCG@1"), METRICS.index("NDCG@3")
    models = [(r[3][:, i1].mean() + r[3][:, i3].mean(), -pos, r[0])
              for pos, r in enumerate(rows) if r[1] == "model"]
    return max(models)[2] if models else None


def settings(args, n_lines):
    """The report's header: what was scored and how."""
    n = args.bootstrap
    return {"test_file": args.test_file, "lines": n_lines, "match": args.match,
            "match_note": MATCH_NOTES[args.match], "seed": args.seed, "bootstrap": n, "level": LEVEL,
            "interval": f"{LEVEL:.0%} percentile bootstrap over test users, {n} resamples" if n
            else "none (--bootstrap 0)",
            "paired_test": f"two-sided paired sign-flip permutation test, {n} permutations" if n else None,
            "best_by": "NDCG@1 + NDCG@3"}


def write_outputs(out_dir, rep):
    try:
        _write_outputs(out_dir, rep)
    except OSError as err:
        raise UserError(f"cannot write the report into {out_dir}: {err.strerror or err}") from None


def _write_outputs(out_dir, rep):
    md, png = report.markdown(rep), report.bar_chart_png(rep)  # render all before writing any
    write_json_atomic(os.path.join(out_dir, "metrics.json"), rep)
    write_text_atomic(os.path.join(out_dir, "metrics.md"), md)
    with atomic_path(os.path.join(out_dir, "metrics.png")) as tmp, open(tmp, "wb") as f:
        f.write(png)


def main(argv=None):
    args = parse_args(argv)
    start = time.time()
    truths, cand_lists, cand_sets = inputs.load_test(args.test_file, args.match)
    rows, notes = collect_rows(args, truths, cand_lists, cand_sets)
    unreachable = sum(t not in c for t, c in zip(truths, cand_sets))
    if unreachable:
        notes.append(f"warning: {unreachable} test lines have an answer that is not among their candidates "
                     f"under '{args.match}' matching (no ranking can hit them)")
    best = best_model(rows)
    pairs = pairs_to_compare(args, [r[0] for r in rows], best)
    summaries, comparisons = summarise(rows, pairs, args.bootstrap, args.seed)
    rep = {**settings(args, len(truths)), "best": best, "rows": summaries,
           "comparisons": comparisons, "notes": notes}
    write_outputs(args.out_dir, rep)
    print(report.terminal_table(rep))
    for note in notes:
        print(note)
    print(f"wrote {args.out_dir}/metrics.json, metrics.md, metrics.png: {len(truths)} test lines, "
          f"{len(rows)} rows, best {best} ({time.time() - start:.1f}s)")
    return 0


if __name__ == "__main__":
    run_main(main)
