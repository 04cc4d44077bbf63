"""The unified JSONL (docs/data.md §7): one JSON object per line, written by `rsrefseg-prepare`, by the
synthetic export, or by the authors' release (``datainfo/<dataset>_<split>.jsonl``) as shipped.

Required fields: ``image_id``, ``sent``, ``file_name`` (relative to the image folder) and
``segmentation`` (one COCO RLE, a list of them — unioned — or polygons). Optional: ``split``,
``sample_id``, ``height`` / ``width``, ``category_name``, ``category_id``, ``ann_id``, ``ref_id``,
``sent_id``; other fields (``bbox``, ``area``, …) are ignored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rsrefseg.data.json_lines import read_json_lines
from rsrefseg.data.records import (
    CocoSegmentation,
    ReferringRecord,
    SentenceSpaces,
    make_sample_id,
    normalise_sentence,
    require_dir,
    require_file,
    require_sentences,
    require_split,
    skip_known_bad,
)

REQUIRED_FIELDS = ("image_id", "sent", "file_name", "segmentation")


def read_jsonl(
    *,
    root: str | Path,
    split: str,
    file: str = "{split}.jsonl",
    image_dir: str | Path = "images",
    skip_files: Sequence[str] = (),
    skip_samples: Sequence[str] = (),
    sentence_spaces: SentenceSpaces = "collapse",
    check_sentences: bool = True,
) -> list[ReferringRecord]:
    """Records of one split of a unified JSONL, in line order.

    With ``{split}`` in ``file`` (one file per split) every line must belong to that split (or
    name none); without it (one file for all splits) the lines of ``split`` are selected.

    Args:
        root: The folder the JSONL path is relative to.
        split: ``train`` | ``val`` | ``test``.
        file: JSONL path relative to ``root``; ``{split}`` is replaced by the split name
            (the authors' release: ``datainfo/rrsisd_{split}.jsonl``).
        image_dir: The folder ``file_name`` is relative to; relative paths are taken from ``root``.
        skip_files: Known-bad image names or stems left out (logged).
        skip_samples: Further sample ids, image names or stems left out (logged); an empty ``sent``
            is named by its sample id so that it can be left out here.
        sentence_spaces: ``collapse`` runs of spaces (ours) or ``keep`` ``sent`` as it is (the release).
        check_sentences: Fail on a kept empty sentence (``rsrefseg-prepare`` reports them instead).

    Returns:
        The split's records. ``sample_id`` is the line's own when it has one, else
        ``"<split>-<position:05d>-<image stem>"`` — the id the raw-layout readers give the same
        sample, since the release's converters keep the raw index order.

    Raises:
        FileNotFoundError: Naming the root / JSONL file / image folder that is missing.
        ValueError: Naming the file and line of malformed JSON, a missing field, a line of another
            split in a per-split file, an empty ``sent`` that is not skipped, or a split without lines.
    """
    require_split(split)
    root = require_dir(
        Path(root).expanduser(),
        what="JSONL root folder",
        hint="; set data.root=<the folder of the JSONL files>",
    )
    path = require_file(root / file.format(split=split), what=f"{split} JSONL file")
    images = require_dir(
        root / Path(image_dir).expanduser(), what="image folder of the JSONL file_name fields"
    )
    per_split_file = "{split}" in file

    records: list[ReferringRecord] = []
    splits_seen: set[str] = set()
    for where, entry in read_json_lines(path):
        missing = [key for key in REQUIRED_FIELDS if key not in entry]
        if missing:
            raise ValueError(f"{where}: missing field(s) {missing}; fields present: {sorted(entry)}")
        line_split = entry.get("split", split)
        splits_seen.add(str(line_split))
        if line_split != split:
            if per_split_file:
                raise ValueError(f"{where}: split={line_split!r} in the file for split {split!r}")
            continue
        records.append(
            _record(
                entry,
                split=split,
                position=len(records),
                images=images,
                where=where,
                sentence_spaces=sentence_spaces,
            )
        )
    if not records:
        raise ValueError(f"{path} has no line of split {split!r}; splits present: {sorted(splits_seen)}")
    records = skip_known_bad(records, [*skip_files, *skip_samples], source=path, split=split)
    if check_sentences:
        require_sentences(records, source=path)
    return records


def _record(
    entry: Mapping[str, Any], *, split: str, position: int, images: Path, where: str, sentence_spaces: str
) -> ReferringRecord:
    file_name = str(entry["file_name"])
    size = _stated_size(entry, where)
    return ReferringRecord(
        sample_id=str(entry.get("sample_id") or make_sample_id(split, position, file_name)),
        split=split,
        image_root=images,
        file_name=file_name,
        sentence=normalise_sentence(str(entry["sent"]), sentence_spaces),
        mask=CocoSegmentation(entry["segmentation"], size=size),
        original_size=size,
        category=_optional(entry, "category_name", str),
        category_id=_optional(entry, "category_id", int),
        image_id=str(entry["image_id"]),
        ann_id=_optional(entry, "ann_id", int),
        ref_id=_optional(entry, "ref_id", int),
        sent_id=_optional(entry, "sent_id", int),
        source=where,
    )


def _stated_size(entry: Mapping[str, Any], where: str) -> tuple[int, int] | None:
    """``(H, W)`` from ``height`` / ``width``, else the (first) RLE's ``size``; None for bare polygons."""
    if "height" in entry or "width" in entry:
        if "height" not in entry or "width" not in entry:
            raise ValueError(f"{where}: 'height' and 'width' must come together")
        return int(entry["height"]), int(entry["width"])
    segmentation = entry["segmentation"]
    first = segmentation[0] if isinstance(segmentation, list) and segmentation else segmentation
    if isinstance(first, Mapping) and "size" in first:
        height, width = first["size"]
        return int(height), int(width)
    return None


def _optional(entry: Mapping[str, Any], key: str, kind: type) -> Any:
    value = entry.get(key)
    return None if value is None else kind(value)
