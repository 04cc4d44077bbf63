"""Present and save metrics: a console table, `key value` lines, Markdown, JSON and per-sample CSV."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from rsrefseg.io import atomic_write_json, atomic_write_text

Columns = Mapping[str, Mapping[str, float]]


def _row_names(columns: Columns) -> list[str]:
    names: list[str] = []
    for values in columns.values():
        names += [k for k in values if k not in names]
    return names


def _cell(row: str, value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.0f}" if row.startswith("count/") or row == "num_samples" else f"{value:.2f}"


def print_table(columns: Columns, *, title: str, console: Console | None = None) -> None:
    """Print one row per metric and one column per evaluated setting (e.g. test, shuffled, baselines)."""
    table = Table(title=title)
    table.add_column("metric")
    for name in columns:
        table.add_column(name, justify="right")
    for row in _row_names(columns):
        table.add_row(row, *(_cell(row, values.get(row)) for values in columns.values()))
    (console or Console()).print(table)


def markdown_table(columns: Columns, *, title: str | None = None) -> str:
    """The same table as GitHub Markdown, under ``title`` (which names the split) when given."""
    lines = [f"**{title}**", ""] if title else []
    lines += ["| metric | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for row in _row_names(columns):
        lines.append(f"| {row} | " + " | ".join(_cell(row, v.get(row)) for v in columns.values()) + " |")
    return "\n".join(lines) + "\n"


def plain_lines(prefix: str, values: Mapping[str, float]) -> str:
    """``<prefix>/<metric> <value>`` lines, easy to grep from a log (e.g. ``test/gIoU 47.12``)."""
    return "\n".join(f"{prefix}/{k} {v:.4f}" for k, v in values.items())


def save_results(
    output_dir: str | Path,
    payload: Mapping,
    columns: Columns,
    *,
    stem: str = "metrics",
    title: str | None = None,
) -> Path:
    """Write ``<stem>.json`` (everything) and ``<stem>.md`` (the table) atomically; return the JSON path."""
    output_dir = Path(output_dir)
    atomic_write_text(output_dir / f"{stem}.md", markdown_table(columns, title=title))
    return atomic_write_json(output_dir / f"{stem}.json", payload)


#: columns of a per-sample scores file (``samples_<pass>.csv``)
SAMPLE_COLUMNS = ("sample_id", "group", "iou", "intersection", "union")


def save_sample_scores(
    output_dir: str | Path, passes: Mapping[str, Sequence[Mapping[str, Any]]]
) -> list[Path]:
    """Write one ``samples_<pass>.csv`` per scored pass (e.g. ``samples_test.csv``), atomically.

    Each row is one sample: its id, its group (expression type or category; empty without groups),
    its IoU as a fraction (6 decimals) and its intersection and union in pixels, so that two runs on
    the same split can be compared sample by sample (``rsrefseg-aggregate``).

    Returns:
        The written paths.
    """
    paths = []
    for name, rows in passes.items():
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(SAMPLE_COLUMNS)
        for row in rows:
            writer.writerow(
                [row["sample_id"], row["group"], f"{row['iou']:.6f}", row["intersection"], row["union"]]
            )
        paths.append(atomic_write_text(Path(output_dir) / f"samples_{name}.csv", text.getvalue()))
    return paths
