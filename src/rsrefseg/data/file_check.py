"""Every file of a split, checked from headers when the split is built: before the first step.

Opening an image with PIL parses its header only (no pixel is decoded), so the sizes of all files
of a 50k-sample dataset are read in seconds; threads overlap the file system's latency. A missing
test image thus fails the run at setup, with every bad file named in one error, rather than after
training. The sizes read here also decide ``data.size_mismatch``: what happens to a sample whose
mask, or whose index's stated size, differs from its image (RRSIS-D ships a few 800×787 JPEGs
whose masks and ``instances.json`` entries are 800×800). Decoding every pixel (truncated files,
broken RLEs, empty masks) is ``rsrefseg-prepare``'s job; the loader names any it meets.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from PIL import Image

from rsrefseg.data.records import (
    CocoSegmentation,
    MaskFile,
    MaskSource,
    ReferringRecord,
    parent_state,
    require_choice,
)

log = logging.getLogger(__name__)

#: ``resize_mask``: the mask is resized (nearest) to the image, as the authors' release does;
#: ``skip``: the sample is left out; ``error``: the split is refused
SizeMismatch = Literal["resize_mask", "skip", "error"]
SIZE_MISMATCH_POLICIES: tuple[str, ...] = get_args(SizeMismatch)
#: lines shown per error or log message; the count always covers all of them
_SHOWN = 100
#: below this many files, threads cost more than they save
_PARALLEL_FROM = 64


class DataFilesError(ValueError):
    """Files of a split are missing or unreadable, or sizes disagree under ``size_mismatch=error``."""


@dataclass(frozen=True)
class SampleSizes:
    """``(H, W)`` of a sample's image, of its mask as stored, and as its index states it.

    Attributes:
        image: From the image file's header.
        mask: From the mask file's header or the RLE's ``size``; the stated size for polygons;
            None when unknown.
        stated: What the index says (``instances.json``, a JSONL's ``height`` / ``width``), or None.
    """

    image: tuple[int, int]
    mask: tuple[int, int] | None
    stated: tuple[int, int] | None

    @property
    def mismatched(self) -> bool:
        return any(size is not None and size != self.image for size in (self.mask, self.stated))

    def describe(self, record: ReferringRecord) -> str:
        """``"<id>: image <path> is H×W, its mask … is h×w, the index states h×w"`` (what differs)."""
        parts = []
        if self.mask is not None and self.mask != self.image:
            parts.append(f"its mask {mask_name(record.mask, record)} is {hw(self.mask)}")
        if self.stated is not None and self.stated != self.image:
            parts.append(f"the index states {hw(self.stated)}")
        return f"{record.sample_id}: image {record.image_path} is {hw(self.image)}, " + ", ".join(parts)


def hw(size: Sequence[int]) -> str:
    return f"{size[0]}×{size[1]}"


def mask_name(source: MaskSource, record: ReferringRecord) -> str:
    """A mask file's path, or which annotation a segmentation belongs to."""
    if isinstance(source, MaskFile):
        return str(source.path)
    ann = f" (ann_id {record.ann_id})" if record.ann_id is not None else ""
    return f"the segmentation of {record.file_name}{ann}"


def header_size(path: Path, *, what: str) -> tuple[int, int]:
    """``(H, W)`` from an image file's header; no pixel is decoded.

    Raises:
        FileNotFoundError: If the file is missing.
        ValueError: If PIL cannot identify the file.
    """
    try:
        with Image.open(path) as image:
            width, height = image.size
    except FileNotFoundError:
        raise
    except (OSError, SyntaxError, Image.DecompressionBombError) as err:
        raise ValueError(f"unreadable {what} {path}: {err}") from err
    return int(height), int(width)


def segmentation_size(source: CocoSegmentation) -> tuple[int, int] | None:
    """The size a COCO segmentation decodes to, from its JSON alone.

    Raises:
        ValueError: If it is not an RLE dict, a list of RLE dicts of one size, or polygons.
    """
    segmentation = source.segmentation
    parts = segmentation if isinstance(segmentation, list | tuple) else [segmentation]
    if parts and all(isinstance(part, Mapping) for part in parts):
        try:
            sizes = {(int(p["size"][0]), int(p["size"][1])) for p in parts}
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise ValueError(f"an RLE without a valid 'size' ([h, w]): {err!r}") from err
        if len(sizes) > 1:
            raise ValueError(f"its RLEs have different sizes {sorted(sizes)}")
        return sizes.pop()
    if parts and all(isinstance(part, list | tuple) for part in parts):
        return source.size  # polygons are rasterised at the stated size
    raise ValueError(
        f"segmentation of type {type(segmentation).__name__}; expected an RLE dict, a non-empty list "
        "of RLE dicts or a non-empty list of polygons"
    )


def read_sample_sizes(
    records: Sequence[ReferringRecord], *, name: str = "", threads: int | None = None
) -> list[SampleSizes]:
    """Every image and mask file's size from its header, one `SampleSizes` per record.

    Args:
        records: A split's records.
        name: The split's name for the error, e.g. ``"RRSIS-D val"``.
        threads: Threads reading headers (default: 4 per CPU, at most 16).

    Returns:
        The records' sizes, in record order.

    Raises:
        DataFilesError: Naming every missing or unreadable file (and the samples using it) and every
            malformed segmentation, in one message.
    """
    images = sorted({r.image_path for r in records})
    mask_files = sorted({r.mask.path for r in records if isinstance(r.mask, MaskFile)})
    jobs = [(path, "image") for path in images] + [(path, "mask") for path in mask_files]
    results = dict(zip(jobs, _map(_header_or_error, jobs, threads), strict=True))

    problems: dict[str, list[str]] = defaultdict(list)  # problem → sample ids
    sizes: list[SampleSizes] = []
    for record in records:
        image = results[(record.image_path, "image")]
        if isinstance(image, str):
            problems[image].append(record.sample_id)
        if isinstance(record.mask, MaskFile):
            mask = results[(record.mask.path, "mask")]
        else:
            try:
                mask = segmentation_size(record.mask)
            except ValueError as err:
                mask = f"{mask_name(record.mask, record)}: {err}"
        if isinstance(mask, str):
            problems[mask].append(record.sample_id)
        if not isinstance(image, str) and not isinstance(mask, str):
            sizes.append(SampleSizes(image, mask, record.original_size))
    if problems:
        raise DataFilesError(_problem_message(problems, name=name, total=len(records)))
    return sizes


def apply_size_policy(
    records: Sequence[ReferringRecord], sizes: Sequence[SampleSizes], *, policy: SizeMismatch, name: str = ""
) -> tuple[list[ReferringRecord], list[ReferringRecord]]:
    """Apply ``data.size_mismatch`` to the records whose mask or stated size differs from the image.

    Each such sample is logged once here, when the split is built (not per load or epoch).

    Args:
        records: A split's records.
        sizes: Their sizes (`read_sample_sizes`).
        policy: ``resize_mask`` (kept; the loader resizes the mask, nearest), ``skip`` (left out)
            or ``error``.
        name: The split's name for messages.

    Returns:
        The records to serve (index order) and the mismatched ones (resized or skipped).

    Raises:
        DataFilesError: Under ``error``, naming every mismatched sample.
    """
    require_choice("size_mismatch", policy, SIZE_MISMATCH_POLICIES)
    mismatched = [(r, s) for r, s in zip(records, sizes, strict=True) if s.mismatched]
    if not mismatched:
        return list(records), []
    lines = _shown([s.describe(r) for r, s in mismatched])
    if policy == "error":
        raise DataFilesError(
            f"{name or 'split'}: {len(mismatched)} sample(s) whose mask or stated size differs from the "
            f"image (data.size_mismatch=error):\n{lines}\n"
            "data.size_mismatch=resize_mask resizes such masks to the image (nearest, the authors' "
            "release); data.size_mismatch=skip leaves the samples out"
        )
    action = "mask resized to the image (nearest)" if policy == "resize_mask" else "left out"
    log.warning(
        "%s: %d sample(s) whose mask or stated size differs from the image, %s (data.size_mismatch=%s):\n%s",
        name or "split",
        len(mismatched),
        action,
        policy,
        lines,
    )
    odd = {r.sample_id for r, _ in mismatched}
    kept = [r for r in records if policy == "resize_mask" or r.sample_id not in odd]
    return kept, [r for r, _ in mismatched]


def _header_or_error(job: tuple[Path, str]) -> tuple[int, int] | str:
    """A header's size, or the problem as a line of the error (threads must not raise)."""
    path, what = job
    try:
        return header_size(path, what=what)
    except FileNotFoundError:
        return f"missing {what} {path}"
    except ValueError as err:
        return str(err)


def _map(function: Callable[[Any], Any], items: Sequence[Any], threads: int | None) -> list[Any]:
    if len(items) < _PARALLEL_FROM:
        return [function(item) for item in items]
    workers = threads or min(16, 4 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(function, items, chunksize=64))


def _problem_message(problems: Mapping[str, list[str]], *, name: str, total: int) -> str:
    samples = len({sid for ids in problems.values() for sid in ids})
    lines = []
    for problem, ids in problems.items():
        shown = ", ".join(ids[:3]) + (f", … ({len(ids)} samples)" if len(ids) > 3 else "")
        lines.append(f"{problem} (sample {shown})")
    first_missing = next((p for p in problems if p.startswith("missing ")), None)
    where = ""
    if first_missing is not None:
        # a wrong folder or suffix shows at once in what the folder holds instead
        where = "\n" + parent_state(Path(first_missing.split(" ", 2)[2])).strip(" ()")
    return (
        f"{name or 'split'}: {len(problems)} bad file(s) or segmentation(s) in {samples} of {total} "
        f"samples, found when the split was built (before any step):\n{_shown(lines)}{where}\n"
        "fix or restore the files, or leave the samples out (data.skip_samples=[…]); "
        "rsrefseg-prepare checks every pixel too"
    )


def _shown(lines: Sequence[str]) -> str:
    text = "\n".join(f"  {line}" for line in lines[:_SHOWN])
    if len(lines) > _SHOWN:
        text += f"\n  … and {len(lines) - _SHOWN} more"
    return text
