"""Summarise one scenario run with several seeds: reads <run>/metrics.json per seed, writes summary.{json,md,png}.

For every row: the mean and the sample standard deviation (n - 1 in the denominator) over seeds of NDCG@1/3/5
and MRR, with each seed's value. For every paired comparison the runs report (metric/metric.py --compare):
the mean difference, its standard deviation, and in how many seeds the paired test gave p < ALPHA with the
difference positive, and with it negative. A row or comparison absent from some seed is summarised over the
seeds that have it, and says how many those are.
"""

import argparse
import io
import math
import os

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from common.cli import UserError, run_main
from common.io import read_json, write_json_atomic, write_text_atomic

SUMMARY_METRICS = ("NDCG@1", "NDCG@3", "NDCG@5", "MRR")
ALPHA = 0.05


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", nargs="+", required=True, help="one run folder per seed, each with metrics.json")
    p.add_argument("--out-dir", required=True, help="where summary.json, summary.md, summary.png go")
    return p.parse_args(argv)


def mean_sd(values):
    """(mean, sample standard deviation); the deviation is None for fewer than two values."""
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, None
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def read_runs(runs):
    """{seed name: metrics.json dict}, the seed named by its folder (seed42), in the order given."""
    reports = {}
    for run in runs:
        path = os.path.join(run, "metrics.json")
        if not os.path.isfile(path):
            raise UserError(f"{path} not found: that seed's run did not finish (run it again to resume it)")
        name = os.path.basename(os.path.normpath(run))
        if name in reports:
            raise UserError(f"{run}: two runs named {name}")
        reports[name] = read_json(path, "metrics report")
    return reports


def _ordered(keys_per_seed):
    seen = []
    for keys in keys_per_seed:
        seen += [k for k in keys if k not in seen]
    return seen


def summarise(reports):
    """The summary dict: rows and comparisons over seeds (see the module docstring)."""
    seeds = list(reports)
    rows = []
    for name in _ordered([[r["name"] for r in rep["rows"]] for rep in reports.values()]):
        per_seed = {s: next((r for r in rep["rows"] if r["name"] == name), None) for s, rep in reports.items()}
        per_seed = {s: r for s, r in per_seed.items() if r is not None}
        metrics = {}
        for m in SUMMARY_METRICS:
            values = {s: r["metrics"][m]["value"] for s, r in per_seed.items()}
            mean, sd = mean_sd(list(values.values()))
            metrics[m] = {"mean": mean, "sd": sd, "seeds": values}
        kind = next(iter(per_seed.values()))["kind"]
        rows.append({"name": name, "kind": kind, "n": len(per_seed), "metrics": metrics})
    comparisons = []
    pairs = _ordered([[(c["a"], c["b"]) for c in rep["comparisons"]] for rep in reports.values()])
    for a, b in pairs:
        per_seed = {s: c for s, rep in reports.items() for c in rep["comparisons"] if (c["a"], c["b"]) == (a, b)}
        metrics = {}
        for m in SUMMARY_METRICS:
            cells = {s: c["metrics"][m] for s, c in per_seed.items()}
            mean, sd = mean_sd([x["diff"] for x in cells.values()])
            ps = [x for x in cells.values() if x.get("p") is not None]
            metrics[m] = {
                "mean": mean, "sd": sd, "seeds": {s: x["diff"] for s, x in cells.items()},
                "p": {s: x.get("p") for s, x in cells.items()},
                "positive": sum(x["diff"] > 0 for x in cells.values()),
                "significant_positive": sum(x["p"] < ALPHA and x["diff"] > 0 for x in ps),
                "significant_negative": sum(x["p"] < ALPHA and x["diff"] < 0 for x in ps),
                "tested": len(ps),
            }
        comparisons.append({"a": a, "b": b, "n": len(per_seed), "metrics": metrics})
    test_files = sorted({rep["test_file"] for rep in reports.values()})
    return {"seeds": seeds, "alpha": ALPHA, "test_files": test_files,
            "lines": {s: rep["lines"] for s, rep in reports.items()}, "rows": rows, "comparisons": comparisons}


def _mean_sd_cell(cell, digits=3):
    if cell["sd"] is None:
        return f"{cell['mean']:.{digits}f}"
    return f"{cell['mean']:.{digits}f} ± {cell['sd']:.{digits}f}"


def _table(header, rows):
    return ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)] + \
        ["| " + " | ".join(r) + " |" for r in rows]


def markdown(summary):
    seeds = summary["seeds"]
    n = len(seeds)
    lines = [f"# {n} seeds: {', '.join(seeds)}", "",
             f"Test users per seed: {', '.join(f'{s} {k}' for s, k in summary['lines'].items())}. "
             "Each cell: mean ± sample standard deviation over seeds.", ""]
    rows = []
    for r in summary["rows"]:
        label = r["name"] + (" (baseline)" if r["kind"] == "baseline" else "") + \
            ("" if r["n"] == n else f" ({r['n']} seeds)")
        rows.append([label] + [_mean_sd_cell(r["metrics"][m]) for m in SUMMARY_METRICS])
    lines += _table(["method"] + list(SUMMARY_METRICS), rows) + [""]
    lines += ["NDCG@1 per seed:", ""]
    rows = [[r["name"]] + [f"{r['metrics']['NDCG@1']['seeds'][s]:.3f}" if s in r["metrics"]["NDCG@1"]["seeds"]
                           else "-" for s in seeds] for r in summary["rows"]]
    lines += _table(["method"] + seeds, rows) + [""]
    if summary["comparisons"]:
        lines += [f"Paired differences A - B on the same test users: mean ± sd over seeds; [k/n > 0: seeds with "
                  f"A above B; j+ l-: seeds whose paired test gave p < {summary['alpha']} with A above B, below B].",
                  ""]
        rows = []
        for c in summary["comparisons"]:
            cells = [f"{'+' if x['mean'] >= 0 else ''}{_mean_sd_cell(x)} [{x['positive']}/{len(x['seeds'])} > 0; "
                     f"{x['significant_positive']}+ {x['significant_negative']}-]"
                     for x in (c["metrics"][m] for m in SUMMARY_METRICS)]
            label = f"{c['a']} - {c['b']}" + ("" if c["n"] == n else f" ({c['n']} seeds)")
            rows.append([label] + cells)
        lines += _table(["A - B"] + list(SUMMARY_METRICS), rows) + [""]
        lines += ["NDCG@1 difference (p) per seed:", ""]
        rows = []
        for c in summary["comparisons"]:
            x = c["metrics"]["NDCG@1"]
            rows.append([f"{c['a']} - {c['b']}"] + [
                (f"{x['seeds'][s]:+.3f}" + (f" ({x['p'][s]:.2g})" if x["p"][s] is not None else ""))
                if s in x["seeds"] else "-" for s in seeds])
        lines += _table(["A - B"] + seeds, rows) + [""]
    return "\n".join(lines)


def chart_png(summary):
    """PNG bytes: NDCG@1 per row, the bar at the mean, a dot per seed."""
    rows = summary["rows"]
    fig = Figure(figsize=(max(7, 0.6 * len(rows) + 2), 4.5))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for i, r in enumerate(rows):
        cell = r["metrics"]["NDCG@1"]
        ax.bar(i, cell["mean"], 0.7, yerr=cell["sd"] or 0, capsize=3,
               color="0.8" if r["kind"] == "baseline" else "tab:blue", edgecolor="black", linewidth=0.4)
        vals = list(cell["seeds"].values())
        ax.scatter([i] * len(vals), vals, s=10, color="black", zorder=3)
    ax.set_xticks(range(len(rows)), [r["name"] for r in rows], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("NDCG@1")
    ax.set_ylim(bottom=0)
    ax.set_title(f"NDCG@1 over seeds {', '.join(summary['seeds'])}: mean ± sd, a dot per seed", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, metadata={"Software": None})
    return buf.getvalue()


def main(argv=None):
    args = parse_args(argv)
    summary = summarise(read_runs(args.runs))
    os.makedirs(args.out_dir, exist_ok=True)
    write_json_atomic(os.path.join(args.out_dir, "summary.json"), summary)
    write_text_atomic(os.path.join(args.out_dir, "summary.md"), markdown(summary))
    png = os.path.join(args.out_dir, "summary.png")
    with open(png + ".tmp", "wb") as f:
        f.write(chart_png(summary))
    os.replace(png + ".tmp", png)
    print(f"wrote {args.out_dir}/summary.{{md,json,png}}: {len(summary['seeds'])} seeds, "
          f"{len(summary['rows'])} rows, {len(summary['comparisons'])} comparisons")
    return 0


if __name__ == "__main__":
    run_main(main)
