"""The layout RefSegRS and RISBench share: an image folder, a mask folder and one phrase file per split.

A phrase file holds one sample per line, ``"<name> <expression words…>"``; the same name may appear
on several lines (one image, several expressions). The two datasets differ only in whether
``<name>`` carries the file extension, which the suffix arguments absorb.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rsrefseg.data.records import (
    MaskFile,
    MaskRule,
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


def read_phrase_layout(
    *,
    layout: str,
    root: str | Path,
    split: str,
    image_dir: str,
    mask_dir: str,
    phrase_file: str,
    image_suffix: str,
    mask_suffix: str,
    skip_files: Sequence[str],
    skip_samples: Sequence[str] = (),
    sentence_spaces: SentenceSpaces = "collapse",
    mask_rule: MaskRule = "threshold",
    check_sentences: bool = True,
) -> list[ReferringRecord]:
    """Records of one split of a phrase-file layout, in phrase-file order.

    Args:
        layout: The dataset's name, for messages.
        root: The dataset folder.
        split: ``train`` | ``val`` | ``test``.
        image_dir: Image folder relative to ``root``.
        mask_dir: Mask folder relative to ``root``.
        phrase_file: Phrase file relative to ``root``; ``{split}`` is replaced by the split name.
        image_suffix: Appended to a line's name to get the image file name.
        mask_suffix: Appended to a line's name to get the mask file name.
        skip_files: Known-bad image names (or stems) left out.
        skip_samples: Further sample ids, image names or stems left out.
        sentence_spaces: ``collapse`` (single spaces) or ``keep``: the text after the first space
            of the stripped line, as the authors' release takes it.
        mask_rule: How mask values become the object (`MaskFile.rule`).
        check_sentences: Fail on a kept line without expression (``rsrefseg-prepare`` reports them).

    Returns:
        The split's records (``original_size`` None: only the images know it).

    Raises:
        FileNotFoundError: If the root, a folder or the phrase file is missing.
        ValueError: If a kept line has no expression (all such lines named) or the split lists no sample.
    """
    require_split(split)
    root = require_dir(Path(root).expanduser(), what=f"{layout} root folder", hint=_ROOT_HINT)
    phrases = require_file(root / phrase_file.format(split=split), what=f"{layout} {split} phrase file")
    images = require_dir(root / image_dir, what=f"{layout} image folder")
    masks = require_dir(root / mask_dir, what=f"{layout} mask folder")

    records = []
    for line_number, line in enumerate(phrases.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        if sentence_spaces == "keep":
            name, _, text = line.strip().partition(" ")
        else:
            name, *words = line.split(maxsplit=1)
            text = words[0] if words else ""
        sentence = normalise_sentence(text, sentence_spaces)
        file_name = name + image_suffix
        records.append(
            ReferringRecord(
                sample_id=make_sample_id(split, len(records), file_name),
                split=split,
                image_root=images,
                file_name=file_name,
                sentence=sentence,
                mask=MaskFile(masks / (name + mask_suffix), rule=mask_rule),
                image_id=Path(file_name).stem,
                source=f"{phrases}:{line_number}",
            )
        )
    if not records:
        raise ValueError(f"{phrases} lists no sample; expected lines '<name> <expression>'")
    records = skip_known_bad(records, [*skip_files, *skip_samples], source=phrases, split=split)
    if check_sentences:
        require_sentences(records, source=phrases)
    return records


_ROOT_HINT = "; set data.root=<the downloaded folder> or paths.data_dir / RSREFSEG_DATA_DIR"
