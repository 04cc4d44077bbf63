"""The map-style dataset over any reader's records: decode, check, transform.

Items have the synthetic dataset's keys plus the padding information evaluation needs, so the
training module and the metrics treat every dataset the same.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from rsrefseg.data.decode import decode_mask, load_image, resize_mask_nearest
from rsrefseg.data.file_check import (
    SIZE_MISMATCH_POLICIES,
    SampleSizes,
    SizeMismatch,
    apply_size_policy,
    mask_name,
    read_sample_sizes,
)
from rsrefseg.data.records import CocoSegmentation, ReferringRecord, require_choice
from rsrefseg.data.transforms import Sample, check_output


class ReferringDataset(Dataset):
    """Decoded, transformed samples of a list of `ReferringRecord`s.

    Building it checks every file the records point at from the headers (`rsrefseg.data.file_check`):
    a missing or unreadable file fails here, before any step, with every bad file named. Samples
    whose mask or stated size differs from the image follow ``size_mismatch``.

    Args:
        records: One split's records, in the order they are served (val / test order is this order).
        transform: ``sample -> sample`` ending with `ResizePad` (see `rsrefseg.data.transforms`).
        keep_original_mask: Put ``original_mask`` into items (needed to score val / test at the
            original size; training can drop it to move less memory).
        name: Shown in ``repr`` and errors, e.g. ``"RefSegRS train"``.
        size_mismatch: ``resize_mask`` (the mask is resized to the image, nearest, as the authors'
            release does; scoring at the original size then uses that mask), ``skip`` (such samples
            are left out) or ``error``. Either way they are logged once, here.
        check_files: Read every file's header now (False: files are first opened when loaded, and
            ``skip`` cannot know which samples to leave out).
        check_threads: Threads reading headers (default: 4 per CPU, at most 16).

    Raises:
        ValueError: If ``records`` mix splits or repeat a sample id, or ``size_mismatch`` is unknown
            or ``skip`` without ``check_files``.
        DataFilesError: Naming every missing or unreadable file, or (``error``) every size mismatch.
    """

    def __init__(
        self,
        records: Sequence[ReferringRecord],
        *,
        transform: Callable[[Sample], Sample],
        keep_original_mask: bool = True,
        name: str = "",
        size_mismatch: SizeMismatch = "resize_mask",
        check_files: bool = True,
        check_threads: int | None = None,
    ) -> None:
        records = list(records)
        splits = sorted({r.split for r in records})
        if len(splits) > 1:
            raise ValueError(f"{name or 'records'} mix splits {splits}; give one split per dataset")
        repeated = [sid for sid, n in Counter(r.sample_id for r in records).items() if n > 1]
        if repeated:
            raise ValueError(f"{name or 'records'} repeat sample ids {repeated[:5]}; ids must be unique")
        require_choice("size_mismatch", size_mismatch, SIZE_MISMATCH_POLICIES)
        if size_mismatch == "skip" and not check_files:
            raise ValueError("size_mismatch=skip needs check_files=True: the sizes decide what is left out")
        mismatched: list[ReferringRecord] = []
        if check_files:
            sizes = read_sample_sizes(records, name=name, threads=check_threads)
            records, mismatched = apply_size_policy(records, sizes, policy=size_mismatch, name=name)
        self.records = records
        #: ids of the samples whose sizes disagreed: resized (``resize_mask``) or left out (``skip``)
        self.size_mismatched = [r.sample_id for r in mismatched]
        self.size_mismatch = size_mismatch
        self.transform = transform
        self.keep_original_mask = keep_original_mask
        self.name = name

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        return f"ReferringDataset({self.name or 'unnamed'}, {len(self.records)} samples)"

    def image_keys(self) -> list[str]:
        """Each sample's image file: equal keys, one image (``data.group_sentences`` groups by them)."""
        return [str(r.image_path) for r in self.records]

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Sample ``index``.

        Returns:
            ``image`` float32 3×S×S in [0, 1] (content top-left, zero padding); ``mask`` float32
            1×S×S in {0, 1}; ``valid`` bool 1×S×S (False on padding); ``sentence``, ``sample_id``
            str; ``category`` str or None; ``original_size`` ``(H, W)``; ``content_size``
            ``(h, w)`` of the content inside the S×S canvas; ``original_mask`` bool H×W (after
            augmentation; H×W like the metrics' targets) unless ``keep_original_mask`` is False.

        Raises:
            IndexError: If ``index`` is outside ``[0, len)``.
            FileNotFoundError / ValueError: Naming the sample, where its index lists it and the file
                or segmentation that is missing or undecodable, or whose size disagrees with the
                image (under ``size_mismatch`` other than ``resize_mask``).
        """
        if not 0 <= index < len(self.records):
            raise IndexError(f"index {index} is out of range for {self!r}")
        record = self.records[index]
        image = _named(record, load_image, record.image_path)
        mask = _named(record, decode_mask, record.mask)
        height, width = image.shape[:2]
        sizes = SampleSizes((height, width), mask.shape, record.original_size)
        if sizes.mismatched:
            if self.size_mismatch != "resize_mask":
                # the build-time check left such samples out or refused them: the files changed since
                raise ValueError(
                    f"sample {sizes.describe(record)} (data.size_mismatch={self.size_mismatch}; "
                    "found when loading: did the files change after the split was built?)"
                )
            if mask.shape != (height, width):
                mask = resize_mask_nearest(mask, (height, width))
        sample = self.transform(
            {
                "image": torch.from_numpy(image).permute(2, 0, 1).float().div_(255.0),
                "mask": torch.from_numpy(mask).unsqueeze(0).float(),
                "sentence": record.sentence,
            }
        )
        check_output(sample, self.transform)
        item = {
            "image": sample["image"],
            "mask": sample["mask"],
            "valid": sample["valid"],
            "sentence": sample["sentence"],
            "sample_id": record.sample_id,
            "category": record.category,
            "original_size": (height, width),
            "content_size": sample["content_size"],
        }
        if self.keep_original_mask:
            item["original_mask"] = sample["original_mask"]
        return item

    def describe(self) -> dict[str, Any]:
        """Index statistics (no image is opened): samples, images, sentence length, categories, and
        the samples whose sizes disagreed (``size_mismatch/resized`` or ``size_mismatch/skipped``)."""
        words = [len(r.sentence.split()) for r in self.records]
        categories = {r.category for r in self.records if r.category is not None}
        handled = "resized" if self.size_mismatch == "resize_mask" else "skipped"
        return {
            "num_samples": len(self.records),
            "num_images": len({r.image_path for r in self.records}),
            "mean_sentence_words": sum(words) / len(words) if words else 0.0,
            "num_categories": len(categories),
            "size_mismatch": {handled: len(self.size_mismatched)},
        }


def referring_split(
    *,
    reader: Callable[..., Sequence[ReferringRecord]],
    split: str,
    transform: Callable[[Sample], Sample],
    keep_original_mask: bool = True,
    name: str = "",
    size_mismatch: SizeMismatch = "resize_mask",
) -> ReferringDataset:
    """One split as a dataset: ``reader(split=split)``'s records under ``transform``.

    The data configs' split factories (``_partial_: true``) call this, so a split's index is read
    and its files checked (every header; see `ReferringDataset`) when the datamodule sets the
    split up, not when the config is instantiated.

    Args:
        reader: A configured reader (``functools.partial`` of ``read_<layout>``) taking ``split``.
        split: ``train`` | ``val`` | ``test``.
        transform: The split's transform, ending with `ResizePad`.
        keep_original_mask: See `ReferringDataset`.
        name: The dataset's name for messages (the split is appended).
        size_mismatch: ``resize_mask`` | ``skip`` | ``error`` (``data.size_mismatch``).
    """
    records = reader(split=split)
    return ReferringDataset(
        records,
        transform=transform,
        keep_original_mask=keep_original_mask,
        name=f"{name} {split}".strip(),
        size_mismatch=size_mismatch,
    )


def _named(record: ReferringRecord, load: Callable[[Any], Any], what: Any) -> Any:
    """``load(what)``, with an error naming the sample and where its index lists it."""
    try:
        return load(what)
    except (FileNotFoundError, ValueError) as err:
        where = f" ({record.source})" if record.source else ""
        # file errors name their path already; a segmentation is named by its annotation
        subject = f"{mask_name(what, record)}: " if isinstance(what, CocoSegmentation) else ""
        raise type(err)(f"sample {record.sample_id}{where}: {subject}{err}") from err
