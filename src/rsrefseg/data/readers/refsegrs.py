"""RefSegRS as downloaded: ``images/<id>.tif``, ``masks/<id>.tif`` and ``output_phrase_<split>.txt``.

Phrase lines are ``"<id> <expression…>"`` with the id given without its extension. Masks are
single-channel 0 / 255 TIFFs (thresholded at > 127, see `rsrefseg.data.decode`). The dataset has
14 categories but no per-sample category label, so records carry ``category=None``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rsrefseg.data.readers._phrase_layout import read_phrase_layout
from rsrefseg.data.records import MaskRule, ReferringRecord, SentenceSpaces


def read_refsegrs(
    *,
    root: str | Path,
    split: str,
    image_dir: str = "images",
    mask_dir: str = "masks",
    phrase_file: str = "output_phrase_{split}.txt",
    image_suffix: str = ".tif",
    mask_suffix: str = ".tif",
    skip_files: Sequence[str] = (),
    skip_samples: Sequence[str] = (),
    sentence_spaces: SentenceSpaces = "collapse",
    mask_rule: MaskRule = "threshold",
    check_sentences: bool = True,
) -> list[ReferringRecord]:
    """Records of one RefSegRS split, in phrase-file order.

    Args:
        root: The ``RefSegRS`` folder.
        split: ``train`` | ``val`` | ``test``.
        image_dir: Image folder relative to ``root``.
        mask_dir: Mask folder relative to ``root``.
        phrase_file: Phrase file relative to ``root``, ``{split}`` replaced by the split name.
        image_suffix: Extension added to a line's id for its image.
        mask_suffix: Extension added to a line's id for its mask.
        skip_files: Known-bad image names or ids left out (logged).
        skip_samples: Further sample ids, file names or stems left out (logged).
        sentence_spaces: ``collapse`` runs of spaces (ours) or ``keep`` them (the authors' release).
        mask_rule: ``threshold`` or ``nonzero`` (see `rsrefseg.data.decode.binarise`).
        check_sentences: Fail on a kept line without expression (``rsrefseg-prepare`` reports them).

    Returns:
        The split's records; ``sample_id`` is ``"<split>-<line:05d>-<id>"``.

    Raises:
        FileNotFoundError: Naming the root / folder / phrase file that is missing.
        ValueError: If a kept line has no expression or the phrase file is empty.
    """
    return read_phrase_layout(
        layout="RefSegRS",
        root=root,
        split=split,
        image_dir=image_dir,
        mask_dir=mask_dir,
        phrase_file=phrase_file,
        image_suffix=image_suffix,
        mask_suffix=mask_suffix,
        skip_files=skip_files,
        skip_samples=skip_samples,
        sentence_spaces=sentence_spaces,
        mask_rule=mask_rule,
        check_sentences=check_sentences,
    )
