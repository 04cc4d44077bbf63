"""The sample record every dataset reader produces, and the known-bad skip list shared by all of them.

A record says where a sample's pieces are; it holds no pixels. Readers build records without
opening images (a 52k-sample index loads in a second); `ReferringDataset` decodes them and
`rsrefseg-prepare` checks every file they point at.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class MaskFile:
    """A mask stored as an image file (single channel, 0 / 255 or 0 / 1).

    Attributes:
        path: The mask image.
    """

    path: Path


@dataclass(frozen=True)
class CocoSegmentation:
    """A mask stored as COCO segmentation JSON, kept exactly as the source wrote it.

    Attributes:
        segmentation: One RLE dict ``{"size": [h, w], "counts": str | list}``, a list of RLE
            dicts (their union is the mask: RRSIS-D), or a polygon list ``[[x1, y1, x2, y2, …], …]``.
        size: ``(H, W)`` of the image; needed to rasterise polygons, cross-checked against RLEs.
    """

    segmentation: Any
    size: tuple[int, int] | None = None


MaskSource = MaskFile | CocoSegmentation


@dataclass(frozen=True)
class ReferringRecord:
    """One (image, sentence, mask) triplet as listed by a dataset's index.

    Attributes:
        sample_id: Unique within the split and stable across the raw layout and its unified JSONL:
            ``"<split>-<position:05d>-<image stem>"`` where position counts the split's index
            entries (phrase-file lines, refs' sentences, JSONL lines) before any known-bad skip.
        split: ``train`` | ``val`` | ``test``.
        image_root: The folder ``file_name`` is relative to.
        file_name: The image path relative to ``image_root`` (as the unified JSONL stores it).
        sentence: The referring expression, whitespace-normalised.
        mask: Where the ground-truth mask comes from.
        original_size: ``(H, W)`` of the image when the index states it (RRSIS-D, JSONL); None when
            only the image itself knows (phrase-file layouts) — the dataset reads it on load.
        category: The referent's category name, when the dataset has one per sample.
        category_id: The dataset's id of that category.
        image_id: The dataset's image id (a string: RefSegRS ids are names, RRSIS-D's numbers).
        ann_id: Annotation id (COCO-style layouts).
        ref_id: Reference id (refer-style layouts).
        sent_id: Sentence id (refer-style layouts).
    """

    sample_id: str
    split: str
    image_root: Path
    file_name: str
    sentence: str
    mask: MaskSource
    original_size: tuple[int, int] | None = None
    category: str | None = None
    category_id: int | None = None
    image_id: str | None = None
    ann_id: int | None = None
    ref_id: int | None = None
    sent_id: int | None = None

    @property
    def image_path(self) -> Path:
        return self.image_root / self.file_name


def make_sample_id(split: str, position: int, file_name: str) -> str:
    """``"<split>-<position:05d>-<stem>"``: readable, unique per index entry, layout-independent."""
    return f"{split}-{position:05d}-{Path(file_name).stem}"


def normalise_sentence(text: str) -> str:
    """Collapse runs of whitespace (phrase files and JSONL differ in stray spaces, not in words)."""
    return " ".join(text.split())


def require_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is unknown; expected one of {SPLITS}")


def is_listed(record: ReferringRecord, names: frozenset[str]) -> bool:
    """Whether a known-bad list names the record's image, by file name or by stem.

    DATA.md lists RRSIS-D's bad images with ``.jpg`` and RISBench's without an extension; both match.
    """
    name = Path(record.file_name).name
    return name in names or Path(name).stem in names


def partition_known_bad(
    records: Iterable[ReferringRecord], skip_files: Sequence[str]
) -> tuple[list[ReferringRecord], list[ReferringRecord]]:
    """Split records into (kept, skipped) by a known-bad list, keeping the index order of both.

    Args:
        records: Records in index order.
        skip_files: Image file names or stems to leave out.

    Returns:
        The records to use and the records left out.
    """
    names = frozenset(str(name) for name in skip_files)
    kept, skipped = [], []
    for record in records:
        (skipped if names and is_listed(record, names) else kept).append(record)
    return kept, skipped


def skip_known_bad(
    records: Iterable[ReferringRecord], skip_files: Sequence[str], *, source: Path, split: str
) -> list[ReferringRecord]:
    """`partition_known_bad`, logging how many and which samples were left out."""
    kept, skipped = partition_known_bad(records, skip_files)
    if skipped:
        names = sorted({Path(r.file_name).name for r in skipped})
        log.info(
            "%s [%s]: skipped %d known-bad sample(s) of %d image(s): %s",
            source,
            split,
            len(skipped),
            len(names),
            ", ".join(names),
        )
    return kept


def require_file(path: Path, *, what: str, hint: str = "") -> Path:
    """Return ``path`` if it is a file; otherwise fail naming it, what it is and the parent's state."""
    if path.is_file():
        return path
    raise FileNotFoundError(f"{what} not found: {path}{_parent_state(path)}{hint}")


def require_dir(path: Path, *, what: str, hint: str = "") -> Path:
    """Return ``path`` if it is a folder; otherwise fail naming it, what it is and the parent's state."""
    if path.is_dir():
        return path
    raise FileNotFoundError(f"{what} not found: {path}{_parent_state(path)}{hint}")


def _parent_state(path: Path) -> str:
    """What is there instead: a wrong root shows at once in the parent's listing."""
    parent = path.parent
    if not parent.is_dir():
        return f" (its folder {parent} does not exist either)"
    entries = sorted(p.name for p in parent.iterdir())
    shown = ", ".join(entries[:12]) + (", …" if len(entries) > 12 else "")
    return f" ({parent} holds: {shown or 'nothing'})"
