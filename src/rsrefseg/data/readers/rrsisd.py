"""RRSIS-D as downloaded: ``rrsisd/refs(unc).p``, ``rrsisd/instances.json``, ``images/rrsisd/JPEGImages``.

``refs(unc).p`` is a pickled list of refer-style dicts (``ref_id, ann_id, image_id, split,
file_name, category_id, sentences=[{sent, raw, tokens, sent_id}, …]``). ``instances.json`` is
COCO-like with three quirks this reader absorbs (docs/data.md §3):

* the annotation's category field is spelled ``categories_id`` (``category_id`` is accepted too);
* ``bbox`` is ``[x1, y1, x2, y2]``, not COCO's xywh (unused here: masks are the target);
* ``segmentation`` is a LIST of compressed RLEs whose union is the mask (the authors' release
  kept only the first element; `rsrefseg.data.decode` takes the union).

Every sentence of a ref is one sample (RRSIS-D has exactly one per ref).
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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

_ROOT_HINT = "; set data.root=<the downloaded folder> or paths.data_dir / RSREFSEG_DATA_DIR"


def read_rrsisd(
    *,
    root: str | Path,
    split: str,
    refs_file: str = "rrsisd/refs(unc).p",
    instances_file: str = "rrsisd/instances.json",
    image_dir: str = "images/rrsisd/JPEGImages",
    skip_files: Sequence[str] = (),
    skip_samples: Sequence[str] = (),
    sentence_spaces: SentenceSpaces = "collapse",
    check_sentences: bool = True,
) -> list[ReferringRecord]:
    """Records of one RRSIS-D split, in the order of ``refs(unc).p``.

    ``refs(unc).p`` is a pickle: loading it runs whatever it was made to run, so only read the
    file from the dataset's own distribution.

    Args:
        root: The dataset folder (the one holding ``rrsisd/`` and ``images/``).
        split: ``train`` | ``val`` | ``test``.
        refs_file: The refs pickle, relative to ``root``.
        instances_file: The COCO-like annotations, relative to ``root``.
        image_dir: The JPEG folder, relative to ``root``.
        skip_files: Known-bad image names (``22187.jpg``) or stems left out (logged).
        skip_samples: Further sample ids, image names or stems left out (logged).
        sentence_spaces: ``collapse`` runs of spaces (ours) or ``keep`` ``sent`` as it is (the release).
        check_sentences: Fail on a kept empty sentence (``rsrefseg-prepare`` reports them instead).

    Returns:
        The split's records with category, ids and ``original_size`` from ``instances.json``;
        ``sample_id`` is ``"<split>-<position:05d>-<image stem>"``.

    Raises:
        FileNotFoundError: Naming the root / file / folder that is missing.
        KeyError: If a ref points at an annotation, image or category ``instances.json`` lacks.
        ValueError: If a ref and its annotation disagree, a field is malformed, a kept sentence is
            empty, or the split is empty.
    """
    require_split(split)
    root = require_dir(Path(root).expanduser(), what="RRSIS-D root folder", hint=_ROOT_HINT)
    refs_path = require_file(root / refs_file, what="RRSIS-D refs pickle")
    instances_path = require_file(root / instances_file, what="RRSIS-D instances.json")
    images = require_dir(root / image_dir, what="RRSIS-D image folder")

    with refs_path.open("rb") as handle:
        refs = pickle.load(handle)
    if not isinstance(refs, list):
        raise ValueError(f"{refs_path} holds a {type(refs).__name__}; expected a list of ref dicts")
    instances = json.loads(instances_path.read_text(encoding="utf-8"))
    for key in ("images", "annotations", "categories"):
        if key not in instances:
            raise ValueError(f"{instances_path} has no '{key}' list; keys present: {sorted(instances)}")
    annotations = {ann["id"]: ann for ann in instances["annotations"]}
    image_sizes = {img["id"]: (int(img["height"]), int(img["width"])) for img in instances["images"]}
    category_names = {cat["id"]: cat["name"] for cat in instances["categories"]}

    records: list[ReferringRecord] = []
    splits_seen: set[str] = set()
    for ref in refs:
        splits_seen.add(ref.get("split"))
        if ref.get("split") != split:
            continue
        where = f"{refs_path} ref_id={ref.get('ref_id')}"
        ann = _lookup(annotations, ref["ann_id"], what="annotation", where=where, source=instances_path)
        ann_category = ann.get("categories_id", ann.get("category_id"))
        if ann_category != ref["category_id"] or ann["image_id"] != ref["image_id"]:
            raise ValueError(
                f"{where} says category_id={ref['category_id']}, image_id={ref['image_id']}, but its "
                f"annotation {ref['ann_id']} in {instances_path} says {ann_category}, {ann['image_id']}"
            )
        size = _lookup(image_sizes, ref["image_id"], what="image", where=where, source=instances_path)
        category = _lookup(
            category_names, ref["category_id"], what="category", where=where, source=instances_path
        )
        for sentence in ref["sentences"]:
            if "sent" not in sentence:
                raise ValueError(f"{where}: a sentence has no 'sent' field (fields: {sorted(sentence)})")
            records.append(
                ReferringRecord(
                    sample_id=make_sample_id(split, len(records), ref["file_name"]),
                    split=split,
                    image_root=images,
                    file_name=ref["file_name"],
                    sentence=normalise_sentence(str(sentence["sent"]), sentence_spaces),
                    mask=CocoSegmentation(ann["segmentation"], size=size),
                    original_size=size,
                    category=category,
                    category_id=int(ref["category_id"]),
                    image_id=str(ref["image_id"]),
                    ann_id=int(ref["ann_id"]),
                    ref_id=int(ref["ref_id"]),
                    sent_id=int(sentence["sent_id"]) if "sent_id" in sentence else None,
                    source=where,
                )
            )
    if not records:
        raise ValueError(
            f"{refs_path} has no ref with split={split!r}; splits present: {sorted(map(str, splits_seen))}"
        )
    records = skip_known_bad(records, [*skip_files, *skip_samples], source=refs_path, split=split)
    if check_sentences:
        require_sentences(records, source=refs_path)
    return records


def _lookup(table: dict[Any, Any], key: Any, *, what: str, where: str, source: Path) -> Any:
    if key not in table:
        raise KeyError(f"{where} points at {what} id {key!r}, which {source} does not list")
    return table[key]
