"""Aggregate one or more sweeps and write the report: the table, the paired Δ, the plot, the job list.

Files written into the output folder (atomically; each one replaced as a whole):

- ``aggregate.md``: everything a reader needs (the common overrides, the ablation table, the
  paired Δ against the reference, the failed / missing jobs and notes);
- ``ablation.csv``: the table at full precision; ``paired.csv``: one line per setting and group;
- ``jobs.csv``: every job and expected job with its status, error and log files;
- ``gIoU.png``: the plot.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rsrefseg.errors import UserError
from rsrefseg.evaluation.sweep.jobs import Job, MissingJob, Sweep, read_sweep
from rsrefseg.evaluation.sweep.paired import ALL, Comparison, compare_with_reference, find_reference
from rsrefseg.evaluation.sweep.plot import plot_gIoU
from rsrefseg.evaluation.sweep.settings import (
    SEED_KEY,
    common_overrides,
    group_by_setting,
    setting_label,
    setting_of,
)
from rsrefseg.evaluation.sweep.table import Row, csv_table, markdown_table, summarise, table_columns
from rsrefseg.io import atomic_write_text

#: below this many samples a bootstrap interval is a rough guide only (said under the paired table)
SMALL_GROUP = 30

#: the files :func:`write_outputs` writes, by role
OUTPUT_FILES = {
    "report": "aggregate.md",
    "table": "ablation.csv",
    "paired": "paired.csv",
    "jobs": "jobs.csv",
    "plot": "gIoU.png",
}


@dataclass(frozen=True)
class Options:
    """How to aggregate.

    Attributes:
        split: The metrics of ``metrics.json`` and the ``samples_<split>.csv`` to read.
        reference: Overrides that pick the reference setting (``model/prompter=cascaded``);
            empty: no paired comparison.
        ignore: Further override keys (fnmatch patterns) that do not make a setting.
        seed_key: The override that numbers replicates.
        resamples: Bootstrap resamples of the paired interval.
        confidence: Coverage of the interval.
        seed: Seed of the bootstrap.
    """

    split: str = "test"
    reference: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    seed_key: str = SEED_KEY
    resamples: int = 10_000
    confidence: float = 0.95
    seed: int = 0


@dataclass(frozen=True)
class Aggregate:
    """What :func:`aggregate` found."""

    options: Options
    sweeps: list[Sweep]
    rows: list[Row]
    columns: list[str]
    common: tuple[str, ...]
    reference: Row | None
    comparisons: list[Comparison]
    failed: list[Job]
    missing: list[MissingJob]
    notes: list[str] = field(default_factory=list)
    #: failed or missing jobs (their folder, or ``<sweep>/<num>``) → the usable job of the same
    #: setting and seed that replaces them (a rerun, in another sweep folder)
    reruns: dict[Path, Path] = field(default_factory=dict)

    @property
    def not_compared(self) -> list[Comparison]:
        return [c for c in self.comparisons if c.problem is not None]

    @property
    def complete(self) -> bool:
        """Every expected job ran and is usable, and every setting could be compared."""
        return not self.failed and not self.missing and not self.not_compared


def aggregate(folders: Sequence[str | Path], options: Options) -> Aggregate:
    """Read the sweeps in ``folders``, group their usable jobs by setting and compare with the reference.

    Raises:
        UserError: For a folder that is not a sweep, no usable job at all, two jobs of the same
            setting and seed, or a reference that matches no setting or several.
    """
    unique = list(dict.fromkeys(Path(f).resolve() for f in folders))
    sweeps = [read_sweep(f, split=options.split, seed_key=options.seed_key) for f in unique]
    jobs = [job for sweep in sweeps for job in sweep.jobs]
    usable = [job for job in jobs if job.usable]
    failed = [job for job in jobs if not job.usable]
    missing = [m for sweep in sweeps for m in sweep.missing]
    notes = [note for sweep in sweeps for note in sweep.notes]
    reruns = _reruns(usable, failed, missing, options)
    for place, job in reruns.items():
        notes.append(f"{place} did not finish; the same setting and seed finished in {job}, which is used")
    failed = [job for job in failed if job.path not in reruns]
    missing = [m for m in missing if m.sweep / str(m.num) not in reruns]
    if not usable:
        listing = "; ".join(f"{job.path}: {job.problem}" for job in failed) or "no job folders"
        raise UserError(
            f"no finished job with {options.split} metrics in {', '.join(map(str, unique))} ({listing})"
        )
    groups = group_by_setting(usable, ignore=options.ignore, seed_key=options.seed_key)
    common = common_overrides(list(groups))
    columns = table_columns(usable)
    rows = summarise(groups, common)
    reference = find_reference(rows, options.reference) if options.reference else None
    comparisons: list[Comparison] = []
    if reference is not None:
        comparisons = compare_with_reference(
            rows,
            reference,
            split=options.split,
            group_order=[c.removeprefix("gIoU/") for c in columns if c.startswith("gIoU/")],
            resamples=options.resamples,
            confidence=options.confidence,
            seed=options.seed,
        )
    else:
        notes.append("no --reference given: no paired comparison")
    return Aggregate(
        options, sweeps, rows, columns, common, reference, comparisons, failed, missing, notes, reruns
    )


def _reruns(
    usable: Sequence[Job], failed: Sequence[Job], missing: Sequence[MissingJob], options: Options
) -> dict[Path, Path]:
    """Failed or missing jobs whose setting and seed a usable job has (rerun into another sweep folder)."""

    def key(overrides: Sequence[str], seed: object) -> tuple[tuple[str, ...], str]:
        return setting_of(overrides, ignore=options.ignore, seed_key=options.seed_key), str(seed)

    done = {key(job.overrides, job.seed): job.path for job in usable}
    reruns = {
        job.path: done[key(job.overrides, job.seed)] for job in failed if key(job.overrides, job.seed) in done
    }
    for m in missing:
        if m.overrides is not None:
            found = done.get(key(m.overrides, m.seed))
            if found is not None:
                reruns[m.sweep / str(m.num)] = found
    return reruns


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------


def markdown_report(result: Aggregate) -> str:
    """``aggregate.md``: the table, the paired Δ, the failed and missing jobs, the notes."""
    options = result.options
    n_jobs = sum(row.n for row in result.rows)
    lines = [
        f"# Sweep: {', '.join(str(s.path) for s in result.sweeps)}",
        "",
        f"Split `{options.split}`: {n_jobs} finished jobs in {len(result.rows)} settings; "
        f"{len(result.failed)} failed or unfinished, {len(result.missing)} missing.",
    ]
    if result.common:
        lines += ["", "Every setting: " + " ".join(f"`{o}`" for o in result.common)]
    lines += [
        "",
        f"## Ablation table ({options.split}, mean ± std over seeds, n = seeds)",
        "",
        markdown_table(result.rows, result.columns),
    ]
    if result.reference is not None:
        lines += [_paired_markdown(result)]
    lines += _problems_markdown(result)
    if result.notes:
        lines += ["## Notes", "", *[f"- {note}" for note in result.notes], ""]
    return "\n".join(lines)


def _paired_markdown(result: Aggregate) -> str:
    options = result.options
    assert result.reference is not None
    reference = next(c for c in result.comparisons if c.row is result.reference)
    groups = [d.group for d in reference.deltas] or [ALL]
    sizes = {d.group: f" (n={d.n_samples})" for d in reference.deltas}
    percent = f"{options.confidence * 100:g}%"
    lines = [
        f"## Paired Δ gIoU against `{result.reference.label}` (points; {percent} bootstrap interval)",
        "",
        f"Per test sample, the setting's IoU (mean over its seeds) minus the reference's; Δ is the mean, "
        f"the interval resamples the samples ({options.resamples} resamples, seed {options.seed}). "
        "`*`: the interval excludes 0.",
        "",
        "| setting | " + " | ".join(f"Δ {g}{sizes.get(g, '')}" for g in groups) + " |",
        "|---|" + "---:|" * len(groups),
    ]
    for comparison in result.comparisons:
        label = comparison.row.label.replace("|", "\\|")
        if comparison.problem is not None:
            cells = ["not compared (see below)"] + [""] * (len(groups) - 1)
        elif comparison.row is result.reference:
            cells = ["reference"] * len(groups)
        else:
            by_group = {d.group: d for d in comparison.deltas}
            cells = [_delta_cell(by_group.get(g)) for g in groups]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    few = [d.group for d in reference.deltas if d.n_samples < SMALL_GROUP]
    if few:
        lines += ["", f"Intervals over fewer than {SMALL_GROUP} samples ({', '.join(few)}) are rough."]
    return "\n".join(lines) + "\n"


def _delta_cell(delta) -> str:
    if delta is None:
        return "–"
    star = "*" if delta.excludes_zero else ""
    return f"{delta.delta:+.2f} [{delta.low:+.2f}, {delta.high:+.2f}]{star}"


def _problems_markdown(result: Aggregate) -> list[str]:
    lines: list[str] = []
    if result.failed:
        lines += [
            f"## Failed or unfinished jobs ({len(result.failed)})",
            "",
            "| job | setting | seed | status | error | logs |",
            "|---|---|---|---|---|---|",
        ]
        for job in result.failed:
            cells = [
                str(job.path),
                _label(job.overrides, result),
                str(job.seed),
                job.problem or "",
                _short(job.error),
                "<br>".join(str(p) for p in job.logs) or "–",
            ]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        lines.append("")
    if result.missing:
        lines += [
            f"## Missing jobs ({len(result.missing)}): expected from multirun.yaml, no job folder",
            "",
            "| sweep | job | setting | seed | logs |",
            "|---|---:|---|---|---|",
        ]
        for missing in result.missing:
            setting = _label(missing.overrides, result) if missing.overrides is not None else "(optuna trial)"
            logs = "<br>".join(str(p) for p in missing.logs) or "–"
            seed = "–" if missing.seed is None else str(missing.seed)
            cells = [str(missing.sweep), f"#{missing.num}", setting, seed, logs]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        lines.append("")
    if result.not_compared:
        lines += [f"## Not compared with the reference ({len(result.not_compared)})", ""]
        lines += [f"- {c.row.label}: {c.problem}" for c in result.not_compared]
        lines.append("")
    return lines


def _label(overrides: Sequence[str], result: Aggregate) -> str:
    options = result.options
    return setting_label(
        setting_of(overrides, ignore=options.ignore, seed_key=options.seed_key), result.common
    )


def _short(error: str | None, limit: int = 300) -> str:
    if not error:
        return "–"
    text = " ".join(error.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def paired_csv(result: Aggregate) -> str:
    """``paired.csv``: setting, group (``all`` or a type), samples, pooled gIoUs, Δ, interval, why not."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(
        [
            "setting",
            "reference",
            "group",
            "n_samples",
            "gIoU",
            "reference_gIoU",
            "delta",
            "low",
            "high",
            "problem",
        ]
    )
    reference = result.reference.label if result.reference is not None else ""
    for comparison in result.comparisons:
        if comparison.problem is not None:
            writer.writerow(
                [comparison.row.label, reference, ALL, "", "", "", "", "", "", comparison.problem]
            )
        for d in comparison.deltas:
            numbers = [f"{v:.6f}" for v in (d.setting_gIoU, d.reference_gIoU, d.delta, d.low, d.high)]
            writer.writerow([comparison.row.label, reference, d.group, d.n_samples, *numbers, ""])
    return text.getvalue()


def jobs_csv(result: Aggregate) -> str:
    """``jobs.csv``: every job folder and every missing job, with setting, seed, status, problem, logs."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["job", "setting", "seed", "status", "used", "problem", "error", "logs", "overrides"])
    for sweep in result.sweeps:
        for job in sweep.jobs:
            writer.writerow(
                [
                    job.path,
                    _label(job.overrides, result),
                    job.seed,
                    job.status,
                    "yes" if job.usable else "no",
                    _problem(job.problem, result.reruns.get(job.path)),
                    _short(job.error, 2000) if job.error else "",
                    ";".join(str(p) for p in job.logs),
                    ";".join(job.overrides),
                ]
            )
        for missing in sweep.missing:
            overrides = missing.overrides or ()
            writer.writerow(
                [
                    f"{missing.sweep}/{missing.num}",
                    _label(overrides, result) if missing.overrides is not None else "(optuna trial)",
                    "" if missing.seed is None else missing.seed,
                    "missing",
                    "no",
                    _problem("no job folder", result.reruns.get(missing.sweep / str(missing.num))),
                    "",
                    ";".join(str(p) for p in missing.logs),
                    ";".join(overrides),
                ]
            )
    return text.getvalue()


def _problem(problem: str | None, rerun: Path | None) -> str:
    if problem is None:
        return ""
    return problem if rerun is None else f"{problem}; rerun as {rerun}"


def check_output_folder(out: Path, result: Aggregate) -> None:
    """Refuse an output folder inside a job folder: the report never lands among a job's own files."""
    out = out.resolve()
    for sweep in result.sweeps:
        for job in sweep.jobs:
            if job.path != sweep.path and out.is_relative_to(job.path.resolve()):
                raise UserError(
                    f"--out {out}: inside the job folder {job.path}; choose a folder outside the jobs"
                )
        if (sweep.path / ".hydra").is_dir() and out == sweep.path.resolve():
            raise UserError(f"--out {out}: that is the run folder itself; choose another folder")


def write_outputs(result: Aggregate, out: str | Path) -> dict[str, Path]:
    """Write :data:`OUTPUT_FILES` into ``out`` atomically; return role → path."""
    out = Path(out)
    check_output_folder(out, result)
    paths = {role: out / name for role, name in OUTPUT_FILES.items()}
    atomic_write_text(paths["table"], csv_table(result.rows, result.columns))
    if result.reference is not None:
        atomic_write_text(paths["paired"], paired_csv(result))
    else:
        del paths["paired"]
    atomic_write_text(paths["jobs"], jobs_csv(result))
    plot_gIoU(result.rows, result.columns, paths["plot"], title=" ".join(result.common))
    atomic_write_text(paths["report"], markdown_report(result))
    return paths
