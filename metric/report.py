"""Render a metrics report (the dict saved as metrics.json): terminal table, Markdown, bar chart PNG."""

import io

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from metric.ranking import METRICS, RANK_METRICS, RATE_METRICS

QUALITY_NOTE = ("Output quality (share of test lines): valid = exactly 5 distinct candidate titles; "
                "short = fewer than 5 items; repeated = an item appears twice.")


def _cell(m, digits=4):
    if m.get("low") is None:
        return f"{m['value']:.{digits}f}"
    return f"{m['value']:.{digits}f} [{m['low']:.{digits}f}, {m['high']:.{digits}f}]"


def _diff_cell(m):
    text = f"{m['diff']:+.4f}"
    if m.get("low") is not None:
        text += f" [{m['low']:+.4f}, {m['high']:+.4f}], p={m['p']:.2g}"
    return text


def _p(m):
    return f" (p={m['p']:.2g})" if m.get("p") is not None else ""


def _row_label(row, best):
    mark = " *" if row["name"] == best else ""
    return f"{row['name']}{mark}" + (" (baseline)" if row["kind"] == "baseline" else "")


def terminal_table(report):
    """Values only (intervals are in metrics.md), the best file starred, then the comparisons."""
    labels = [_row_label(r, report["best"]) for r in report["rows"]]
    width = max(len(x) for x in labels + ["method"])
    lines = ["method".ljust(width) + "".join(f"{m:>10}" for m in METRICS)]
    for label, row in zip(labels, report["rows"]):
        lines.append(label.ljust(width) + "".join(f"{row['metrics'][m]['value']:>10.4f}" for m in METRICS))
    if report["comparisons"]:
        lines.append("paired differences A - B" + (" (p-values; intervals in metrics.md):"
                                                  if report["bootstrap"] else ":"))
    for comp in report["comparisons"]:
        cells = [f"{m} {comp['metrics'][m]['diff']:+.4f}" + _p(comp["metrics"][m]) for m in RANK_METRICS[:4]]
        lines.append(f"  {comp['a']} - {comp['b']}: " + "  ".join(cells))
    return "\n".join(lines)


def _md_table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def markdown(report):
    """The report as Markdown: ranking metrics with intervals, output quality rates, comparisons."""
    level = f"{report['level']:.0%}"
    best = report["best"]
    lines = [f"# Metrics on `{report['test_file']}` ({report['lines']} test lines)", "",
             (f"Title matching: **{report['match']}** ({report['match_note']}). "
              f"Intervals: {report['interval']}. Best file by {report['best_by']}: **{best}** (*)."), ""]
    rows = [[_row_label(r, best)] + [_cell(r["metrics"][m]) for m in RANK_METRICS] for r in report["rows"]]
    lines += _md_table(["method"] + list(RANK_METRICS), rows) + [""]
    lines += [QUALITY_NOTE, ""]
    rows = [[_row_label(r, best)] + [f"{r['metrics'][m]['value']:.3f}" for m in RATE_METRICS]
            for r in report["rows"]]
    lines += _md_table(["method"] + list(RATE_METRICS), rows) + [""]
    if report["comparisons"]:
        how = (f", {level} paired bootstrap interval, p from a {report['paired_test']}"
               if report["bootstrap"] else "")
        lines += [f"Paired differences (A - B) on the same test users{how}.", ""]
        rows = [[f"{c['a']} - {c['b']}"] + [_diff_cell(c["metrics"][m]) for m in RANK_METRICS]
                for c in report["comparisons"]]
        lines += _md_table(["A - B"] + list(RANK_METRICS), rows) + [""]
    for note in report["notes"]:
        lines.append(f"- {note}")
    return "\n".join(lines).rstrip() + "\n"


def bar_chart_png(report):
    """PNG bytes: ranking metrics on x, one bar per method, error bars from the intervals."""
    rows = report["rows"]
    n, width = len(rows), 0.8 / max(len(rows), 1)
    fig = Figure(figsize=(max(8, 1.2 * len(RANK_METRICS) * max(1, n / 4)), 4.5))
    FigureCanvasAgg(fig)  # Agg, no pyplot state: safe without a display
    ax = fig.subplots()
    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    for i, row in enumerate(rows):
        vals = [row["metrics"][m]["value"] for m in RANK_METRICS]
        err = None
        if row["metrics"][RANK_METRICS[0]].get("low") is not None:
            err = [[v - row["metrics"][m]["low"] for v, m in zip(vals, RANK_METRICS)],
                   [row["metrics"][m]["high"] - v for v, m in zip(vals, RANK_METRICS)]]
        xs = [j + (i - (n - 1) / 2) * width for j in range(len(RANK_METRICS))]
        hatch = "//" if row["kind"] == "baseline" else None
        ax.bar(xs, vals, width, yerr=err, capsize=2, label=_row_label(row, report["best"]),
               color=cmap(i % cmap.N), hatch=hatch, edgecolor="black", linewidth=0.4)
    ax.set_xticks(range(len(RANK_METRICS)), RANK_METRICS)
    ax.set_ylabel("score")
    ax.set_ylim(bottom=0)
    ax.set_title(f"{report['test_file']}: {report['lines']} users, "
                 f"{report['level']:.0%} intervals, match={report['match']}", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, metadata={"Software": None})
    return buf.getvalue()
