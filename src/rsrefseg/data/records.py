"""The sample record every dataset reader produces, and the known-bad skip list shared by all of them.

A record says where a sample's pieces are; it holds no pixels. Readers build records without
opening images (a 52k-sample index loads in a second); `ReferringDataset` reads every file's
header when it is built and decodes the pixels when a sample is loaded; `rsrefseg-prepare`
decodes every file they point at.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
#: how a mask image's values become the object (see `rsrefseg.data.decode.binarise`)
MaskRule = Literal["threshold", "nonzero"]
MASK_RULES: tuple[str, ...] = get_args(MaskRule)
#: what a sentence's inner whitespace becomes: collapsed to single spaces, or kept as the index has it
SentenceSpaces = Literal["collapse", "keep"]
SENTENCE_SPACES: tuple[str, ...] = get_args(SentenceSpaces)


@dataclass(frozen=True)
class MaskFile:
    """A mask stored as an image file (single channel, 0 / 255 or 0 / 1, or a two-colour palette).

    Attributes:
        path: The mask image.
        rule: ``threshold`` (0 / 1 and 0 / 255 as they are, other values > 127) or ``nonzero``
            (every nonzero value is the object, as the authors' release reads masks).
    """

    path: Path
    rule: MaskRule = "threshold"

    def __post_init__(self) -> None:
        require_choice("mask_rule", self.rule, MASK_RULES)


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
        source: Where the index lists the sample (``"<file>:<line>"``, ``"<refs file> ref_id=<id>"``),
            for messages; not part of the sample's identity.
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
    source: str | None = field(default=None, compare=False)

    @property
    def image_path(self) -> Path:
        return self.image_root / self.file_name


def make_sample_id(split: str, position: int, file_name: str) -> str:
    """``"<split>-<position:05d>-<stem>"``: readable, unique per index entry, layout-independent."""
    return f"{split}-{position:05d}-{Path(file_name).stem}"


def normalise_sentence(text: str, spaces: SentenceSpaces = "collapse") -> str:
    """The sentence a record carries.

    Args:
        text: The expression as the index holds it.
        spaces: ``collapse``: runs of whitespace become one space and the ends are stripped (phrase
            files and JSONL differ in stray spaces, not in words); ``keep``: the text as it is, double
            spaces included (the authors' release).
    """
    require_choice("sentence_spaces", spaces, SENTENCE_SPACES)
    return " ".join(text.split()) if spaces == "collapse" else text


def require_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is unknown; expected one of {SPLITS}")


def require_choice(key: str, value: str, choices: Sequence[str]) -> None:
    """Fail naming the config key when ``value`` is not one of ``choices``."""
    if value not in choices:
        raise ValueError(f"data.{key}={value!r}; expected one of {list(choices)}")


def is_listed(record: ReferringRecord, names: frozenset[str]) -> bool:
    """Whether a skip list names the record: by image file name, by its stem, or by sample id.

    The known-bad lists (docs/data.md §5) name RRSIS-D's bad images with ``.jpg`` and RISBench's
    without an extension; both match.
    A sample id names one sentence of an image (e.g. a JSONL line with an empty sentence).
    """
    name = Path(record.file_name).name
    return name in names or Path(name).stem in names or record.sample_id in names


def partition_known_bad(
    records: Iterable[ReferringRecord], skip_files: Sequence[str]
) -> tuple[list[ReferringRecord], list[ReferringRecord]]:
    """Split records into (kept, skipped) by a skip list, keeping the index order of both.

    Args:
        records: Records in index order.
        skip_files: Image file names, stems or sample ids to leave out.

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
            "%s [%s]: skipped %d listed sample(s) of %d image(s): %s",
            source,
            split,
            len(skipped),
            len(names),
            ", ".join(names),
        )
    return kept


def require_sentences(records: Sequence[ReferringRecord], *, source: Path) -> None:
    """Fail naming every record whose sentence is empty, and how to leave it out.

    Runs after the skip lists are applied, so a sample named there no longer stops the split.
    """
    empty = [r for r in records if not r.sentence.strip()]
    if not empty:
        return
    lines = "\n".join(f"  {r.sample_id} ({r.source or source}, image {r.file_name})" for r in empty)
    ids = ",".join(r.sample_id for r in empty)
    raise ValueError(
        f"{source}: {len(empty)} sample(s) have an empty sentence:\n{lines}\n"
        f"leave them out with the override data.skip_samples=[{ids}]"
    )


def require_file(path: Path, *, what: str, hint: str = "") -> Path:
    """Return ``path`` if it is a file; otherwise fail naming it, what it is and the parent's state."""
    if path.is_file():
        return path
    raise FileNotFoundError(f"{what} not found: {path}{parent_state(path)}{hint}")


def require_dir(path: Path, *, what: str, hint: str = "") -> Path:
    """Return ``path`` if it is a folder; otherwise fail naming it, what it is and the parent's state."""
    if path.is_dir():
        return path
    raise FileNotFoundError(f"{what} not found: {path}{parent_state(path)}{hint}")


def parent_state(path: Path) -> str:
    """What is there instead: a wrong root shows at once in the parent's listing."""
    parent = path.parent
    if not parent.is_dir():
        return f" (its folder {parent} does not exist either)"
    entries = sorted(p.name for p in parent.iterdir())
    shown = ", ".join(entries[:12]) + (", …" if len(entries) > 12 else "")
    return f" ({parent} holds: {shown or 'nothing'})"
