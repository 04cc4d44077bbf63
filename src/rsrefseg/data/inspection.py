"""Checking a dataset file by file: what `rsrefseg-prepare` reports, and the unified JSONL lines.

Every image and mask of a split's records is opened (in worker processes when asked); each
problem becomes a `Defect` naming the sample and file, and a `PrepareReport` collects them.
Errors are samples that cannot be trained or scored as they stand; warnings are reported only.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rsrefseg.data.decode import (
    decode_mask,
    decode_segmentation,
    encode_rle,
    load_image,
    read_mask,
    resize_mask_nearest,
)
from rsrefseg.data.file_check import SIZE_MISMATCH_POLICIES, SizeMismatch, hw, mask_name
from rsrefseg.data.records import CocoSegmentation, MaskFile, ReferringRecord, require_choice

REPORT_NAME = "prepare_report.json"
ERROR_KINDS = (
    "missing_image",
    "unreadable_image",
    "missing_mask",
    "unreadable_mask",
    "bad_segmentation",
    "size_mismatch",
    "stated_size_mismatch",
    "empty_sentence",
)
WARNING_KINDS = ("count_mismatch", "empty_mask", "non_binary_mask", "duplicate_pair")
#: kinds whose level follows ``data.size_mismatch``: errors under ``error``, warnings otherwise
SIZE_KINDS = ("size_mismatch", "stated_size_mismatch")
_EXAMPLES_PRINTED = 10


@dataclass(frozen=True)
class Defect:
    """One problem found, with the file it concerns.

    Attributes:
        kind: One of `ERROR_KINDS` or `WARNING_KINDS`.
        split: The split it was found in.
        message: A sentence naming the file(s) and the values involved.
        sample_id: The sample concerned (None for split-level defects).
        file: The file concerned (None when no single file is).
        level: ``error`` or ``warning``; by default the kind's (`ERROR_KINDS`), but size
            mismatches are warnings unless ``data.size_mismatch=error``.
    """

    kind: str
    split: str
    message: str
    sample_id: str | None = None
    file: str | None = None
    level: str = ""

    def __post_init__(self) -> None:
        if not self.level:
            object.__setattr__(self, "level", "error" if self.kind in ERROR_KINDS else "warning")

    @property
    def is_error(self) -> bool:
        return self.level == "error"


@dataclass
class PrepareReport:
    """What `prepare` found and did (also written as JSON).

    Attributes:
        layout: The data config option used.
        root: The dataset folder checked.
        out: The output folder.
        splits: Per split: ``listed`` (index entries), ``skipped_known_bad`` (by the known-bad list
            or ``data.skip_samples``), ``skipped_size_mismatch``, ``kept``, ``expected``.
        skipped_known_bad: Per split, the skipped samples' image file names (sorted, unique).
        known_bad_not_found: Names on the known-bad list or ``data.skip_samples`` that no checked
            split contains.
        size_mismatch: The ``data.size_mismatch`` policy applied.
        skipped_size_mismatch: Per split, the ids of the samples left out under ``skip``.
        defects: Every problem found.
        image_dir: The folder the JSONL's ``file_name`` fields are relative to.
        categories: The category names the kept samples carry (empty where the layout has none).
        written: Output files written (or left identical) by this run.
    """

    layout: str
    root: str
    out: str
    splits: dict[str, dict[str, int | None]] = field(default_factory=dict)
    skipped_known_bad: dict[str, list[str]] = field(default_factory=dict)
    known_bad_not_found: list[str] = field(default_factory=list)
    size_mismatch: str = "resize_mask"
    skipped_size_mismatch: dict[str, list[str]] = field(default_factory=dict)
    defects: list[Defect] = field(default_factory=list)
    image_dir: str | None = None
    categories: list[str] = field(default_factory=list)
    written: list[str] = field(default_factory=list)

    @property
    def errors(self) -> list[Defect]:
        return [d for d in self.defects if d.is_error]

    @property
    def warnings(self) -> list[Defect]:
        return [d for d in self.defects if not d.is_error]

    def ok(self, *, strict: bool = False) -> bool:
        return not self.errors and not (strict and self.warnings)

    def counts_by_kind(self) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for defect in self.defects:
            counts[defect.kind] += 1
        return dict(sorted(counts.items()))

    def as_dict(self, *, strict: bool = False) -> dict[str, Any]:
        """JSON-ready, deterministic (no times): rerunning on unchanged data gives the same bytes."""
        return {
            "ok": self.ok(strict=strict),
            "strict": strict,
            "layout": self.layout,
            "root": self.root,
            "out": self.out,
            "image_dir": self.image_dir,
            "categories": self.categories,
            "splits": self.splits,
            "skipped_known_bad": self.skipped_known_bad,
            "known_bad_not_found": self.known_bad_not_found,
            "size_mismatch": self.size_mismatch,
            "skipped_size_mismatch": self.skipped_size_mismatch,
            "defect_counts": self.counts_by_kind(),
            "errors": [asdict(d) for d in self.errors],
            "warnings": [asdict(d) for d in self.warnings],
        }


# --------------------------------------------------------------------------------------------------
# Per-file inspection (picklable, so it can run in worker processes)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ImageInfo:
    size: tuple[int, int] | None
    kind: str | None = None  # missing_image | unreadable_image
    message: str | None = None


@dataclass(frozen=True)
class _MaskInfo:
    size: tuple[int, int] | None
    empty: bool = False
    two_valued: bool = True
    values: tuple[int, ...] = ()
    rle: dict[str, Any] | None = None  # only for mask files: the binarised mask, for the JSONL
    kind: str | None = None  # missing_mask | unreadable_mask | bad_segmentation
    message: str | None = None


def _inspect_image(path: Path) -> _ImageInfo:
    if not path.is_file():
        return _ImageInfo(None, "missing_image", f"image {path} does not exist")
    try:
        image = load_image(path)  # decodes every pixel: a truncated file fails here
    except ValueError as err:
        return _ImageInfo(None, "unreadable_image", str(err))
    return _ImageInfo((int(image.shape[0]), int(image.shape[1])))


def _inspect_mask(source: MaskFile | CocoSegmentation) -> _MaskInfo:
    if isinstance(source, MaskFile):
        if not source.path.is_file():
            return _MaskInfo(None, kind="missing_mask", message=f"mask {source.path} does not exist")
        try:
            reading = read_mask(source.path, source.rule)
        except ValueError as err:
            return _MaskInfo(None, kind="unreadable_mask", message=str(err))
        mask = reading.mask
        return _MaskInfo(mask.shape, not mask.any(), reading.two_valued, reading.values, encode_rle(mask))
    try:
        # RLE sizes are compared with the image by the caller (a size_mismatch, not a decoding error);
        # only polygons need the size to be rasterised at all
        mask = decode_mask(source)
    except ValueError as err:
        return _MaskInfo(None, kind="bad_segmentation", message=f"is not decodable: {err}")
    return _MaskInfo(mask.shape, empty=not mask.any())


def _parallel_map(function: Callable[[Any], Any], items: Sequence[Any], workers: int) -> list[Any]:
    """``map`` in order; in ``workers`` processes when > 0 (results stay in input order)."""
    if workers <= 0 or len(items) < 2:
        return [function(item) for item in items]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(function, items, chunksize=max(1, len(items) // (workers * 8))))


# --------------------------------------------------------------------------------------------------
# Checking one split
# --------------------------------------------------------------------------------------------------


@dataclass
class SplitInspection:
    """What checking one split found and what its unified JSONL holds.

    Attributes:
        defects: In record order, duplicates last.
        lines: One unified-JSONL object per served record (meaningful only when no defect is an error).
        size_skipped: Ids of the samples left out under ``size_mismatch=skip``.
    """

    defects: list[Defect]
    lines: list[dict[str, Any]]
    size_skipped: list[str]


def inspect_split(
    records: Sequence[ReferringRecord],
    *,
    split: str,
    workers: int = 0,
    size_mismatch: SizeMismatch = "resize_mask",
) -> SplitInspection:
    """Open every image and mask of a split's records; return the defects and the JSONL lines.

    Args:
        records: The split's records after known-bad skipping, in index order.
        split: The split's name.
        workers: Worker processes for decoding (0: in this process).
        size_mismatch: What a sample whose mask or stated size differs from its image becomes:
            ``resize_mask`` (a warning; its JSONL line holds the mask resized to the image, nearest,
            and ``mask_resized_from``), ``skip`` (a warning; no JSONL line) or ``error``.

    Returns:
        The defects, JSONL lines and size-skipped sample ids.
    """
    require_choice("size_mismatch", size_mismatch, SIZE_MISMATCH_POLICIES)
    image_paths = sorted({r.image_path for r in records})
    image_infos = dict(zip(image_paths, _parallel_map(_inspect_image, image_paths, workers), strict=True))
    mask_files = sorted({r.mask for r in records if isinstance(r.mask, MaskFile)}, key=lambda m: str(m.path))
    file_infos = dict(zip(mask_files, _parallel_map(_inspect_mask, mask_files, workers), strict=True))
    coco = [r.mask for r in records if isinstance(r.mask, CocoSegmentation)]
    coco_infos = iter(_parallel_map(_inspect_mask, coco, workers))

    defects: list[Defect] = []
    lines: list[dict[str, Any]] = []
    size_skipped: list[str] = []
    for record in records:
        image = image_infos[record.image_path]
        mask = file_infos[record.mask] if isinstance(record.mask, MaskFile) else next(coco_infos)
        found = _record_defects(record, image, mask, size_mismatch)
        defects.extend(found)
        if size_mismatch == "skip" and any(d.kind in SIZE_KINDS for d in found):
            size_skipped.append(record.sample_id)
            continue
        lines.append(_jsonl_line(record, image, mask))

    first_of: dict[tuple[str, str], str] = {}
    for record in records:
        key = (record.file_name, record.sentence)
        if key in first_of:
            defects.append(
                Defect(
                    "duplicate_pair",
                    split,
                    f"{record.sample_id} repeats (image {record.image_path}, sentence {record.sentence!r}) "
                    f"of {first_of[key]}",
                    record.sample_id,
                    str(record.image_path),
                )
            )
        else:
            first_of[key] = record.sample_id
    return SplitInspection(defects, lines, size_skipped)


def _record_defects(
    record: ReferringRecord, image: _ImageInfo, mask: _MaskInfo, size_mismatch: str
) -> list[Defect]:
    """What is wrong with one record, given what its image and mask turned out to be."""
    is_file = isinstance(record.mask, MaskFile)
    name = mask_name(record.mask, record)
    found: list[tuple[str, str, Path | str]] = []
    if not record.sentence.strip():
        where = f" ({record.source})" if record.source else ""
        message = f"empty sentence{where}; leave it out with data.skip_samples=[{record.sample_id}]"
        found.append(("empty_sentence", message, record.source or record.image_path))
    if image.kind is not None:
        found.append((image.kind, str(image.message), record.image_path))
    if mask.kind is not None:
        # a mask file's message names its path already; a segmentation is named here
        found.append((mask.kind, f"{'' if is_file else name + ' '}{mask.message}", name))
    outcome = {"resize_mask": "; mask resized to the image (nearest)", "skip": "; left out"}.get(
        size_mismatch, ""
    )
    if image.size is not None and mask.size is not None and image.size != mask.size:
        message = f"mask {name} is {hw(mask.size)}, image {record.image_path} is {hw(image.size)}{outcome}"
        found.append(("size_mismatch", message, record.image_path))
    if image.size is not None and record.original_size is not None and image.size != record.original_size:
        message = (
            f"image {record.image_path} is {hw(image.size)}, the index states {hw(record.original_size)}"
            f"{outcome}"
        )
        found.append(("stated_size_mismatch", message, record.image_path))
    if mask.size is not None and mask.empty:
        found.append(("empty_mask", f"{name} has no foreground pixel", name))
    if not mask.two_valued:
        rule = record.mask.rule if isinstance(record.mask, MaskFile) else "threshold"
        what = "thresholded at > 127" if rule == "threshold" else "nonzero taken as the object"
        message = f"mask {name} is not two-valued (values {list(mask.values)}…); {what} ({rule} rule)"
        found.append(("non_binary_mask", message, name))
    size_level = "error" if size_mismatch == "error" else "warning"
    return [
        Defect(
            kind,
            record.split,
            f"{record.sample_id}: {message}",
            record.sample_id,
            str(file),
            size_level if kind in SIZE_KINDS else "",
        )
        for kind, message, file in found
    ]


def _jsonl_line(record: ReferringRecord, image: _ImageInfo, mask: _MaskInfo) -> dict[str, Any]:
    """The unified-JSONL object of a record.

    COCO segmentations are kept exactly as the source wrote them, mask files become one RLE; a mask
    whose size differs from the image is written resized to it (nearest), with ``mask_resized_from``.
    """
    segmentation = mask.rle if isinstance(record.mask, MaskFile) else record.mask.segmentation
    resized_from = None
    if image.size is not None and mask.size is not None and image.size != mask.size:
        decoded = decode_mask(record.mask) if mask.rle is None else decode_segmentation(mask.rle)
        segmentation = encode_rle(resize_mask_nearest(decoded, image.size))
        resized_from = list(mask.size)
    line: dict[str, Any] = {
        "split": record.split,
        "sample_id": record.sample_id,
        "image_id": record.image_id if record.image_id is not None else Path(record.file_name).stem,
        "sent": record.sentence,
        "file_name": record.file_name,
    }
    if image.size is not None:
        line["height"], line["width"] = image.size
    line["segmentation"] = segmentation
    if resized_from is not None:
        line["mask_resized_from"] = resized_from
    optional = {
        "category_name": record.category,
        "category_id": record.category_id,
        "ann_id": record.ann_id,
        "ref_id": record.ref_id,
        "sent_id": record.sent_id,
    }
    line.update({k: v for k, v in optional.items() if v is not None})
    return line


def format_report(report: PrepareReport, *, strict: bool = False) -> str:
    """The report as plain text: a table per split, then each kind of defect with examples."""
    rows = [f"rsrefseg-prepare: {report.layout} at {report.root}"]
    rows.append(f"{'split':<6} {'listed':>8} {'known-bad':>10} {'kept':>8} {'expected':>9}  counts")
    for split, counts in report.splits.items():
        expected = counts["expected"]
        verdict = "–" if expected is None else ("ok" if counts["listed"] == expected else "MISMATCH")
        rows.append(
            f"{split:<6} {counts['listed']:>8} {counts['skipped_known_bad']:>10} {counts['kept']:>8} "
            f"{'–' if expected is None else expected:>9}  {verdict}"
        )
    for split, names in report.skipped_known_bad.items():
        if names:
            count = report.splits[split]["skipped_known_bad"]
            rows.append(f"skipped as known-bad in {split} ({count} samples): {', '.join(names)}")
    if report.known_bad_not_found:
        rows.append(
            f"known-bad names not found in the checked splits: {', '.join(report.known_bad_not_found)}"
        )
    for split, ids in report.skipped_size_mismatch.items():
        if ids:
            rows.append(
                f"left out in {split} for a size mismatch (data.size_mismatch=skip, {len(ids)} samples): "
                + ", ".join(ids)
            )
    by_kind: dict[str, list[Defect]] = defaultdict(list)
    for defect in report.defects:
        by_kind[defect.kind].append(defect)
    for kind in (*ERROR_KINDS, *WARNING_KINDS):
        found = by_kind.get(kind)
        if not found:
            continue
        level = "ERROR" if found[0].is_error else "warning"  # one level per kind within a run
        rows.append(f"{level} {kind}: {len(found)}")
        rows.extend(f"  {d.message}" for d in found[:_EXAMPLES_PRINTED])
        if len(found) > _EXAMPLES_PRINTED:
            rows.append(f"  … {len(found) - _EXAMPLES_PRINTED} more in {Path(report.out) / REPORT_NAME}")
    if report.ok(strict=strict) and not report.written:
        rows.append("checks passed; nothing written")
    elif report.ok(strict=strict):
        rows.append("OK: wrote " + ", ".join(report.written))
        command = f"rsrefseg-train data=jsonl data.root={report.out}"
        if report.categories:  # per-category scores need the names up front (the metric states)
            command += f" data.group_key=category 'data.group_names=[{','.join(report.categories)}]'"
        rows.append(f"train on it: {command}")
    else:
        reason = "errors" if report.errors else "warnings (--strict)"
        rows.append(f"FAILED ({reason}): no JSONL written; full report in {Path(report.out) / REPORT_NAME}")
    return "\n".join(rows)
