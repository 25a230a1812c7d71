"""The run's figures for MLflow, as pure functions from data to PNG bytes.

Headless: the Agg backend is selected on a figure object, never through pyplot's global state,
so plotting needs no display and does not change how anything else in the process draws.
"""
from __future__ import annotations

import io
import math
from collections.abc import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

# above this many labels a confusion matrix's cells are too small to print their counts in
ANNOTATE_UP_TO = 20


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=100, bbox_inches="tight")
    return out.getvalue()


def loss_curves(curves: dict[str, list[tuple[int, float]]], title: str = "training loss per task") -> bytes:
    """One panel per task: its loss at each logged step where it was trained (a sampled task
    appears only at the steps it was drawn for)."""
    tasks = sorted(curves)
    cols = min(3, max(1, len(tasks)))
    rows = max(1, math.ceil(len(tasks) / cols))
    fig = Figure(figsize=(4.2 * cols, 3.0 * rows))
    for i, task in enumerate(tasks):
        ax = fig.add_subplot(rows, cols, i + 1)
        points = sorted(curves[task])
        ax.plot([s for s, _ in points], [v for _, v in points], marker="o", markersize=3, linewidth=1.2)
        ax.set_title(task)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return _png(fig)


def challenger_vs_champion(challenger: dict[str, float], champion: dict[str, float] | None,
                           labels: dict[str, str], champion_name: str = "champion",
                           challenger_name: str = "challenger") -> bytes:
    """Bars of each task's primary metric (`labels`: task -> metric name); the champion's bar
    beside it when there is one (there is none on a first run)."""
    tasks = sorted(challenger)
    width = 0.38 if champion else 0.6
    fig = Figure(figsize=(max(4.0, 1.3 * len(tasks) + 1.5), 3.6))
    ax = fig.add_subplot(1, 1, 1)
    xs = list(range(len(tasks)))
    shift = width / 2 if champion else 0.0
    bars = ax.bar([x - shift for x in xs], [challenger[t] for t in tasks], width, label=challenger_name)
    ax.bar_label(bars, fmt="%.3f", fontsize=8)
    if champion:
        held = [champion.get(t, float("nan")) for t in tasks]
        bars = ax.bar([x + shift for x in xs], held, width, label=champion_name)
        ax.bar_label(bars, fmt="%.3f", fontsize=8)
    ax.set_xticks(xs, [f"{t}\n{labels.get(t, '')}" for t in tasks])
    ax.set_ylabel("dev score")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"{challenger_name} vs {champion_name}" if champion else f"{challenger_name} (no champion yet)")
    return _png(fig)


def confusion_matrix(labels: Sequence[str], counts: Sequence[Sequence[int]], title: str) -> bytes:
    """Rows: gold label, columns: predicted label; colour is the share of the row (so rare
    labels are as visible as frequent ones), the count is printed in each cell."""
    n = len(labels)
    side = max(3.5, 0.45 * n + 2.0)
    fig = Figure(figsize=(side + 1.0, side))
    ax = fig.add_subplot(1, 1, 1)
    shares = [[c / max(1, sum(row)) for c in row] for row in counts]
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the gold label")
    ax.set_xticks(range(n), list(labels), rotation=90 if n > 6 else 0)
    ax.set_yticks(range(n), list(labels))
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    if n <= ANNOTATE_UP_TO:
        for i, row in enumerate(counts):
            for j, count in enumerate(row):
                ax.text(j, i, str(count), ha="center", va="center", fontsize=7,
                        color="white" if shares[i][j] > 0.5 else "black")
    ax.set_title(title)
    return _png(fig)


def affinity_heatmap(matrix: dict[str, dict[str, float]], method: str = "") -> bytes:
    """Row: the task stepped on; column: the task whose loss moves; positive (blue) helps."""
    tasks = list(matrix)
    values = [[matrix[i].get(j, float("nan")) for j in tasks] for i in tasks]
    bound = max((abs(v) for row in values for v in row if not math.isnan(v)), default=1.0) or 1.0
    side = max(3.5, 0.8 * len(tasks) + 2.0)
    fig = Figure(figsize=(side + 1.0, side))
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(values, cmap="RdBu", vmin=-bound, vmax=bound)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_yticks(range(len(tasks)), tasks)
    ax.set_xlabel("task whose loss moves")
    ax.set_ylabel("task stepped on")
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            ax.text(j, i, f"{v:.3g}", ha="center", va="center", fontsize=8)
    ax.set_title(f"task affinity ({method})" if method else "task affinity")
    return _png(fig)
