"""The ablation plot: gIoU per setting (mean ± std over seeds, one dot per seed), and per type."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rsrefseg.evaluation.sweep.table import Row
from rsrefseg.io import atomic_open

if TYPE_CHECKING:
    from matplotlib.axes import Axes


def plot_gIoU(rows: Sequence[Row], columns: Sequence[str], path: str | Path, *, title: str = "") -> Path:
    """Write a PNG: left, gIoU per setting; right (when the data has groups), gIoU per type and setting.

    Bars are means over seeds, error bars the std (none for a single seed), dots the seeds.
    Drawn with matplotlib's object API (no pyplot), so no global backend or figure state changes.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    groups = [c for c in columns if c.startswith("gIoU/")]
    labels = [row.label for row in rows]
    height = 1.5 + 0.45 * len(rows)
    figure = Figure(figsize=(12 if groups else 6.5, max(3.0, height)), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 2 if groups else 1, squeeze=False)[0]
    y = np.arange(len(rows))
    _bars(axes[0], rows, "gIoU", y, 0.7, 0.0, color="C0")
    axes[0].set_yticks(y, labels)
    axes[0].set_xlabel("test gIoU (%)")
    axes[0].set_title("gIoU per setting")
    if groups:
        width = 0.8 / len(groups)
        for k, name in enumerate(groups):
            offset = (k - (len(groups) - 1) / 2) * width
            _bars(axes[1], rows, name, y, width, offset, color=f"C{k + 1}", label=name.removeprefix("gIoU/"))
        axes[1].set_yticks(y, labels)
        axes[1].set_xlabel("test gIoU (%)")
        axes[1].set_title("gIoU per expression type")
        axes[1].legend(loc="best", fontsize="small")
    for ax in axes:
        ax.invert_yaxis()  # the table's order, top to bottom
        ax.grid(axis="x", alpha=0.3)
    if title:
        figure.suptitle(title, fontsize="small")
    with atomic_open(path) as handle:
        figure.savefig(handle, format="png", dpi=120)
    return Path(path)


def _bars(
    ax: Axes, rows: Sequence[Row], name: str, y: np.ndarray, width: float, offset: float, **style: Any
) -> None:
    means = [row.stats[name].mean if name in row.stats else np.nan for row in rows]
    stds = [(row.stats[name].std or 0.0) if name in row.stats else 0.0 for row in rows]
    ax.barh(y + offset, means, height=width, xerr=stds, capsize=3, alpha=0.8, **style)
    for i, row in enumerate(rows):
        seeds = [job.metrics[name] for job in row.jobs if job.metrics and name in job.metrics]
        ax.plot(seeds, [y[i] + offset] * len(seeds), "k.", markersize=3)
