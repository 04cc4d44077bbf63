"""RISBench as downloaded: ``img_rgb/<name>.png``, ``mask/<name>.png`` and ``output_phrase_<split>.txt``.

Names are ``<split>_<imageIdx>_<objIdx>.png`` and phrase lines give them WITH the extension
(``"train_12_3.png The baseball field, positioned at …"``). Masks are grey PNGs. The dataset has
26 categories but no per-sample category label, so records carry ``category=None``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rsrefseg.data.readers._phrase_layout import read_phrase_layout
from rsrefseg.data.records import MaskRule, ReferringRecord, SentenceSpaces


def read_risbench(
    *,
    root: str | Path,
    split: str,
    image_dir: str = "img_rgb",
    mask_dir: str = "mask",
    phrase_file: str = "output_phrase_{split}.txt",
    skip_files: Sequence[str] = (),
    skip_samples: Sequence[str] = (),
    sentence_spaces: SentenceSpaces = "collapse",
    mask_rule: MaskRule = "threshold",
    check_sentences: bool = True,
) -> list[ReferringRecord]:
    """Records of one RISBench split, in phrase-file order.

    Args:
        root: The ``RISBench`` folder.
        split: ``train`` | ``val`` | ``test``.
        image_dir: Image folder relative to ``root``.
        mask_dir: Mask folder (same file names as the images) relative to ``root``.
        phrase_file: Phrase file relative to ``root``, ``{split}`` replaced by the split name.
        skip_files: Known-bad file names or stems left out (logged).
        skip_samples: Further sample ids, file names or stems left out (logged).
        sentence_spaces: ``collapse`` runs of spaces (ours) or ``keep`` them (the authors' release).
        mask_rule: ``threshold`` or ``nonzero`` (see `rsrefseg.data.decode.binarise`).
        check_sentences: Fail on a kept line without expression (``rsrefseg-prepare`` reports them).

    Returns:
        The split's records; ``sample_id`` is ``"<split>-<line:05d>-<stem>"``.

    Raises:
        FileNotFoundError: Naming the root / folder / phrase file that is missing.
        ValueError: If a kept line has no expression or the phrase file is empty.
    """
    return read_phrase_layout(
        layout="RISBench",
        root=root,
        split=split,
        image_dir=image_dir,
        mask_dir=mask_dir,
        phrase_file=phrase_file,
        image_suffix="",
        mask_suffix="",
        skip_files=skip_files,
        skip_samples=skip_samples,
        sentence_spaces=sentence_spaces,
        mask_rule=mask_rule,
        check_sentences=check_sentences,
    )
