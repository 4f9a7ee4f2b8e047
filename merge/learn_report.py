"""The report of a weight fit: the objective per step and the learned lambdas per layer (PNG heat maps)."""

import math
import os

import numpy as np

from merge.weighted_model import layer_index

ORDER = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # Qwen2's, in data flow


def lambda_grid(lambdas, adapter):
    """(row labels, column labels, matrix) of one adapter's lambda: rows = layers, columns = the
    module's last name part (q_proj, ...); modules outside a decoder layer get a row of their own."""
    rows, cols = {}, {}  # row label -> sort key; column names
    for module in lambdas:
        layer = layer_index(module)
        label = f"layer {layer}" if layer is not None else module
        rows[label] = layer if layer is not None else math.inf
        cols[module.rsplit(".", 1)[-1]] = None
    row_names = sorted(rows, key=lambda r: (rows[r], r))
    col_names = sorted(cols, key=lambda c: (ORDER.index(c) if c in ORDER else len(ORDER), c))
    grid = np.full((len(row_names), len(col_names)), np.nan)
    for module, lam in lambdas.items():
        layer = layer_index(module)
        r = row_names.index(f"layer {layer}" if layer is not None else module)
        grid[r, col_names.index(module.rsplit(".", 1)[-1])] = lam[adapter]
    return row_names, col_names, grid


def write_heatmap(path, lambdas, names):
    """One heat map per adapter: lambda per (layer, module type), on one colour scale from 0 to 1."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    grids = [lambda_grid(lambdas, i) for i in range(len(names))]
    rows, cols = grids[0][0], [c.removesuffix("_proj") for c in grids[0][1]]
    size = (1.5 + (0.35 * len(cols) + 0.6) * len(names), 1.6 + 0.28 * len(rows))
    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    for ax, name, (_, _, grid) in zip(axes, names, grids):
        image = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto", interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.set_xticks(range(len(cols)), cols, rotation=90, fontsize=7)
        ax.set_yticks(range(len(rows)), rows if ax is axes[0] else [""] * len(rows), fontsize=7)
    fig.colorbar(image, ax=list(axes), label="lambda", shrink=0.9)
    fig.suptitle("learned lambda per layer and module", fontsize=10)
    fig.savefig(path, dpi=110)


def write_curve(path, train, heldout, objective):
    """The objective per step on the training batches and on the held-out prompts."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 3.2))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    if train:
        ax.plot(*zip(*train), lw=0.8, alpha=0.6, label="training batch")
    if heldout:
        ax.plot(*zip(*heldout), marker="o", ms=3, label="held-out prompts")
    ax.set_xlabel("step")
    ax.set_ylabel(objective)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def adapter_names(paths):
    """Short names for the adapters (folder names, with the parent when they clash)."""
    names = [os.path.basename(os.path.normpath(p)) for p in paths]
    if len(set(names)) < len(names):
        names = [os.path.join(*os.path.normpath(p).split(os.sep)[-2:]) for p in paths]
    return names
