"""Paired comparison of each setting with a reference setting: Δ gIoU with a bootstrap interval.

Both settings are scored on the same test samples, so they are compared sample by sample:

1. per setting, each sample's IoU is averaged over the setting's seeds (seeds pooled);
2. ``d_i`` = that mean IoU of the setting minus the reference's, for sample ``i``, in
   percentage points; Δ gIoU = mean of ``d_i`` (= the difference of the two pooled gIoUs);
3. the interval: resample the sample ids with replacement (``resamples`` times, each of the
   same size as the split), take the mean of ``d`` each time, and the ``(1 ± confidence) / 2``
   percentiles of those means (percentile bootstrap). Per expression type (group) the same,
   within that type's samples.

The interval is the uncertainty from *which test samples* were drawn, for these trained models;
the spread over training seeds is the table's std. Every job of both settings must have scored
the same sample ids with the same groups: a sample missing on one side is an error naming it.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rsrefseg.errors import UserError
from rsrefseg.evaluation.sweep.jobs import Job
from rsrefseg.evaluation.sweep.settings import override_key, override_value
from rsrefseg.evaluation.sweep.table import Row

#: the name of the all-samples row of a comparison
ALL = "all"


class SampleMismatch(UserError):
    """Two jobs that should be compared did not score the same samples (or gave them other groups)."""


@dataclass(frozen=True)
class SettingScores:
    """One setting's per-sample IoU, seeds pooled.

    Attributes:
        ids: Sample ids, sorted (N).
        groups: Each sample's expression type / category, "" without (N).
        iou: Mean IoU over the setting's seeds, as a fraction (N,).
        source: The file the ids came from (for error messages).
    """

    ids: tuple[str, ...]
    groups: tuple[str, ...]
    iou: np.ndarray
    source: Path


@dataclass(frozen=True)
class Delta:
    """Δ gIoU (setting − reference, percentage points) on one subset of samples, with its interval."""

    group: str
    n_samples: int
    setting_gIoU: float
    reference_gIoU: float
    delta: float
    low: float
    high: float

    @property
    def excludes_zero(self) -> bool:
        """Whether the interval lies on one side of 0 (never for one sample: its interval is a point)."""
        return self.n_samples > 1 and (self.low > 0 or self.high < 0)


@dataclass(frozen=True)
class Comparison:
    """A setting against the reference: its deltas (overall first), or why they could not be computed."""

    row: Row
    deltas: tuple[Delta, ...]
    problem: str | None = None


def read_samples(file: Path) -> dict[str, tuple[str, float]]:
    """Read ``samples_<split>.csv``: sample id → (group, IoU as a fraction).

    Raises:
        UserError: For a missing file, a header without ``sample_id,group,iou``, a duplicate id
            or an IoU outside [0, 1].
    """
    if not file.is_file():
        raise UserError(f"{file}: no per-sample scores (the paired comparison needs them)")
    with file.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if not {"sample_id", "group", "iou"} <= set(reader.fieldnames or ()):
            raise UserError(f"{file}: expected the columns sample_id,group,iou,…, got {reader.fieldnames}")
        samples: dict[str, tuple[str, float]] = {}
        for line, record in enumerate(reader, start=2):
            sample = record["sample_id"]
            if sample in samples:
                raise UserError(f"{file}:{line}: sample {sample!r} appears twice")
            try:
                iou = float(record["iou"])
            except ValueError:
                raise UserError(f"{file}:{line}: iou={record['iou']!r} is not a number") from None
            if not 0.0 <= iou <= 1.0:
                raise UserError(f"{file}:{line}: iou={iou} outside [0, 1] (a fraction, not a percentage)")
            samples[sample] = (record["group"] or "", iou)
    return samples


def setting_scores(jobs: Sequence[Job], split: str) -> SettingScores:
    """Pool a setting's seeds: each sample's IoU averaged over ``jobs``.

    Raises:
        SampleMismatch: When the jobs scored different sample ids or gave a sample different groups.
    """
    first = jobs[0].samples_file(split)
    reference = read_samples(first)
    ids = tuple(sorted(reference))
    iou = np.zeros(len(ids), dtype=np.float64)
    for job in jobs:
        file = job.samples_file(split)
        samples = reference if file == first else read_samples(file)
        _check_same_samples(_groups_of(reference), first, _groups_of(samples), file)
        iou += np.array([samples[i][1] for i in ids], dtype=np.float64)
    return SettingScores(ids, tuple(reference[i][0] for i in ids), iou / len(jobs), first)


def _groups_of(samples: Mapping[str, tuple[str, float]]) -> dict[str, str]:
    return {sample: group for sample, (group, _) in samples.items()}


def _check_same_samples(a: Mapping[str, str], a_file: Path, b: Mapping[str, str], b_file: Path) -> None:
    """Raise :class:`SampleMismatch` unless ``a`` and ``b`` (sample id → group) are the same."""
    only_a = sorted(set(a) - set(b))
    only_b = sorted(set(b) - set(a))
    for only, has, lacks in ((only_a, a_file, b_file), (only_b, b_file, a_file)):
        if only:
            more = f" (and {len(only) - 1} more)" if len(only) > 1 else ""
            raise SampleMismatch(f"sample {only[0]!r}{more} is in {has} but not in {lacks}")
    other = next((i for i in sorted(a) if a[i] != b[i]), None)
    if other is not None:
        raise SampleMismatch(
            f"sample {other!r} has group {a[other]!r} in {a_file} but {b[other]!r} in {b_file}"
        )


def bootstrap_interval(
    differences: np.ndarray, *, resamples: int, confidence: float, seed: int
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``differences.mean()``, resampling its entries with replacement.

    Args:
        differences: Per-sample paired differences (N,).
        resamples: Number of bootstrap resamples (each of size N).
        confidence: Coverage of the interval, e.g. 0.95.
        seed: Seed of the resampling (the same seed gives the same interval).

    Returns:
        (low, high).
    """
    n = differences.size
    if n == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = np.empty(resamples, dtype=np.float64)
    chunk = max(1, min(resamples, 4_000_000 // n))  # bounds the (chunk, N) index array's memory
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        means[start : start + size] = differences[rng.integers(0, n, size=(size, n))].mean(axis=1)
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return float(low), float(high)


def paired_deltas(
    scores: SettingScores,
    reference: SettingScores,
    *,
    group_order: Sequence[str] = (),
    resamples: int,
    confidence: float,
    seed: int,
) -> tuple[Delta, ...]:
    """Δ gIoU of ``scores`` against ``reference``: overall, then per group (``group_order`` first).

    Raises:
        SampleMismatch: When the two settings scored different samples or groups.
    """
    _check_same_samples(
        dict(zip(scores.ids, scores.groups, strict=True)),
        scores.source,
        dict(zip(reference.ids, reference.groups, strict=True)),
        reference.source,
    )
    groups = np.array(scores.groups, dtype=object)
    present = [g for g in dict.fromkeys(scores.groups) if g]
    order = [g for g in group_order if g in present] + [g for g in present if g not in group_order]
    subsets = [(ALL, np.ones(len(groups), dtype=bool))] + [(g, groups == g) for g in order]
    deltas = []
    for name, mask in subsets:
        a, b = scores.iou[mask] * 100.0, reference.iou[mask] * 100.0
        low, high = bootstrap_interval(a - b, resamples=resamples, confidence=confidence, seed=seed)
        deltas.append(
            Delta(name, int(mask.sum()), float(a.mean()), float(b.mean()), float((a - b).mean()), low, high)
        )
    return tuple(deltas)


def compare_with_reference(
    rows: Sequence[Row],
    reference: Row,
    *,
    split: str,
    group_order: Sequence[str] = (),
    resamples: int,
    confidence: float,
    seed: int,
) -> list[Comparison]:
    """Compare every row (the reference included, Δ = 0) with ``reference``.

    A row whose samples do not match the reference's (or are missing) gets no deltas and the
    reason as ``problem``; a problem with the reference's own samples is every row's problem.
    """
    try:
        reference_scores = setting_scores(reference.jobs, split)
    except UserError as error:
        return [Comparison(row, (), f"the reference's samples: {error}") for row in rows]
    comparisons = []
    for row in rows:
        try:
            scores = reference_scores if row is reference else setting_scores(row.jobs, split)
            deltas = paired_deltas(
                scores,
                reference_scores,
                group_order=group_order,
                resamples=resamples,
                confidence=confidence,
                seed=seed,
            )
        except UserError as error:
            comparisons.append(Comparison(row, (), str(error)))
        else:
            comparisons.append(Comparison(row, deltas))
    return comparisons


def find_reference(rows: Sequence[Row], reference: Sequence[str]) -> Row:
    """The one row whose setting contains every ``key=value`` of ``reference``.

    A key the setting does not override is looked up in its first job's composed config (the
    config-group choice in ``.hydra/hydra.yaml``, else the value in ``.hydra/config.yaml``), so
    ``model/prompter=cascaded`` also finds a setting that runs the default prompter.

    Raises:
        UserError: When no row or more than one row matches; the message lists the settings.
    """
    matches = [row for row in rows if all(_has(row, override) for override in reference)]
    wanted = " ".join(reference)
    labels = "; ".join(row.label for row in rows)
    if not matches:
        raise UserError(f"--reference {wanted}: no setting has it (settings: {labels})")
    if len(matches) > 1:
        found = "; ".join(row.label for row in matches)
        raise UserError(
            f"--reference {wanted}: {len(matches)} settings have it ({found}); add overrides to pick one"
        )
    return matches[0]


def _has(row: Row, override: str) -> bool:
    key, value = override_key(override), override_value(override)
    typed = [override_value(o) for o in row.setting if override_key(o) == key]
    if typed:
        return _same_value(typed[-1], value)
    return _same_value(_composed_value(row.jobs[0], key), value)


def _composed_value(job: Job, key: str) -> Any:
    from omegaconf import OmegaConf

    hydra_file = job.path / ".hydra" / "hydra.yaml"
    if hydra_file.is_file():
        choices = OmegaConf.select(OmegaConf.load(hydra_file), "hydra.runtime.choices") or {}
        if key in choices:
            return choices[key]
    config_file = job.path / ".hydra" / "config.yaml"
    if config_file.is_file():
        return OmegaConf.select(
            OmegaConf.load(config_file),
            key.replace("/", "."),
            default=None,
            throw_on_resolution_failure=False,
        )
    return None


def _same_value(actual: Any, typed: str | None) -> bool:
    if actual is None or typed is None:
        return False
    if str(actual) == typed:
        return True
    try:
        return float(actual) == float(typed)
    except (TypeError, ValueError):
        return False
