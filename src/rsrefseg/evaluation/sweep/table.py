"""The ablation table: one row per setting, each metric as mean ± std over the setting's seeds.

The standard deviation is the sample one (``ddof=1``): the spread a new seed would show. A
setting with one seed has no std (shown as the mean alone, an empty cell in the CSV).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from rsrefseg.evaluation.sweep.jobs import Job
from rsrefseg.evaluation.sweep.settings import Setting, setting_label

#: the paper's columns, before the per-type gIoU (``gIoU/<group>``)
METRICS = ("Pr@0.5", "Pr@0.6", "Pr@0.7", "Pr@0.8", "Pr@0.9", "cIoU", "gIoU")


@dataclass(frozen=True)
class Stat:
    """Mean and sample std of one metric over the ``n`` seeds that report it (std None when ``n < 2``)."""

    mean: float
    std: float | None
    n: int


@dataclass(frozen=True)
class Row:
    """One setting of the table.

    Attributes:
        setting: The setting's overrides (sorted).
        label: Its overrides that not every setting shares.
        jobs: Its usable jobs, one per seed.
        stats: Metric name → mean ± std over the jobs that report it.
    """

    setting: Setting
    label: str
    jobs: tuple[Job, ...]
    stats: Mapping[str, Stat]

    @property
    def n(self) -> int:
        return len(self.jobs)

    @property
    def seeds(self) -> tuple[int | str | None, ...]:
        return tuple(job.seed for job in self.jobs)


def table_columns(jobs: Sequence[Job]) -> list[str]:
    """:data:`METRICS`, then every ``gIoU/<group>`` any job reports, in the order first seen."""
    groups: list[str] = []
    for job in jobs:
        groups += [k for k in job.metrics or {} if k.startswith("gIoU/") and k not in groups]
    return [*METRICS, *groups]


def summarise(groups: Mapping[Setting, Sequence[Job]], common: Sequence[str]) -> list[Row]:
    """Mean ± std over seeds of every metric, per setting (in the order of ``groups``)."""
    rows = []
    for setting, jobs in groups.items():
        names = {name for job in jobs for name in job.metrics or {}}
        stats = {
            name: _stat([job.metrics[name] for job in jobs if name in (job.metrics or {})]) for name in names
        }
        rows.append(Row(setting, setting_label(setting, common), tuple(jobs), stats))
    return rows


def _stat(values: Sequence[float]) -> Stat:
    array = np.asarray(values, dtype=np.float64)
    std = float(array.std(ddof=1)) if array.size > 1 else None
    return Stat(float(array.mean()), std, int(array.size))


def markdown_cell(stat: Stat | None, row_n: int) -> str:
    """``47.12 ± 0.85``; the mean alone for one seed; ``(n=k)`` when fewer seeds than the row reports it."""
    if stat is None:
        return "–"
    text = f"{stat.mean:.2f}" if stat.std is None else f"{stat.mean:.2f} ± {stat.std:.2f}"
    return text if stat.n == row_n else f"{text} (n={stat.n})"


def markdown_table(rows: Sequence[Row], columns: Sequence[str]) -> str:
    """The table as GitHub Markdown: setting, n, then one ``mean ± std`` column per metric."""
    lines = [
        "| setting | n | " + " | ".join(columns) + " |",
        "|---|---:|" + "---:|" * len(columns),
    ]
    for row in rows:
        cells = [markdown_cell(row.stats.get(name), row.n) for name in columns]
        lines.append(f"| {_escape(row.label)} | {row.n} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def csv_table(rows: Sequence[Row], columns: Sequence[str]) -> str:
    """The table as CSV: ``setting, overrides, n, seeds``, then ``<metric>_mean, <metric>_std, <metric>_n``.

    Full precision (6 decimals); ``seeds`` and ``overrides`` are ``;``-separated; an empty std
    is a single seed, an empty mean a metric the setting does not report.
    """
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    header = ["setting", "overrides", "n", "seeds"]
    for name in columns:
        header += [f"{name}_mean", f"{name}_std", f"{name}_n"]
    writer.writerow(header)
    for row in rows:
        line: list[object] = [row.label, ";".join(row.setting), row.n, ";".join(str(s) for s in row.seeds)]
        for name in columns:
            stat = row.stats.get(name)
            line += ["", "", 0] if stat is None else [_number(stat.mean), _number(stat.std), stat.n]
        writer.writerow(line)
    return text.getvalue()


def _number(value: float | None) -> str:
    return "" if value is None or math.isnan(value) else f"{value:.6f}"


def _escape(text: str) -> str:
    return text.replace("|", "\\|")
