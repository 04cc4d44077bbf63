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

from rsrefseg.data.decode import decode_mask, load_image
from rsrefseg.data.records import MaskFile, ReferringRecord, require_file
from rsrefseg.data.transforms import Sample, check_output


class ReferringDataset(Dataset):
    """Decoded, transformed samples of a list of `ReferringRecord`s.

    Args:
        records: One split's records, in the order they are served (val / test order is this order).
        transform: ``sample -> sample`` ending with `ResizePad` (see `rsrefseg.data.transforms`).
        keep_original_mask: Put ``original_mask`` into items (needed to score val / test at the
            original size; training can drop it to move less memory).
        name: Shown in ``repr`` and errors, e.g. ``"RefSegRS train"``.

    Raises:
        ValueError: If ``records`` mix splits or repeat a sample id.
    """

    def __init__(
        self,
        records: Sequence[ReferringRecord],
        *,
        transform: Callable[[Sample], Sample],
        keep_original_mask: bool = True,
        name: str = "",
    ) -> None:
        self.records = list(records)
        splits = sorted({r.split for r in self.records})
        if len(splits) > 1:
            raise ValueError(f"{name or 'records'} mix splits {splits}; give one split per dataset")
        repeated = [sid for sid, n in Counter(r.sample_id for r in self.records).items() if n > 1]
        if repeated:
            raise ValueError(f"{name or 'records'} repeat sample ids {repeated[:5]}; ids must be unique")
        self.transform = transform
        self.keep_original_mask = keep_original_mask
        self.name = name

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        return f"ReferringDataset({self.name or 'unnamed'}, {len(self.records)} samples)"

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
            FileNotFoundError / ValueError: Naming the sample and file that is missing, unreadable,
                or whose mask and image sizes disagree.
        """
        if not 0 <= index < len(self.records):
            raise IndexError(f"index {index} is out of range for {self!r}")
        record = self.records[index]
        image = load_image(record.image_path)
        mask = decode_mask(record.mask)
        height, width = image.shape[:2]
        if record.original_size is not None and tuple(record.original_size) != (height, width):
            raise ValueError(
                f"sample {record.sample_id}: image {record.image_path} is {height}×{width}, but its "
                f"index states {record.original_size[0]}×{record.original_size[1]}"
            )
        if mask.shape != (height, width):
            raise ValueError(
                f"sample {record.sample_id}: mask {_describe(record)} is {mask.shape[0]}×{mask.shape[1]}, "
                f"image {record.image_path} is {height}×{width}"
            )
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
        """Index statistics (no image is opened): samples, images, sentence length, categories."""
        words = [len(r.sentence.split()) for r in self.records]
        categories = {r.category for r in self.records if r.category is not None}
        return {
            "num_samples": len(self.records),
            "num_images": len({r.image_path for r in self.records}),
            "mean_sentence_words": sum(words) / len(words) if words else 0.0,
            "num_categories": len(categories),
        }


def referring_split(
    *,
    reader: Callable[..., Sequence[ReferringRecord]],
    split: str,
    transform: Callable[[Sample], Sample],
    keep_original_mask: bool = True,
    name: str = "",
) -> ReferringDataset:
    """One split as a dataset: ``reader(split=split)``'s records under ``transform``.

    The data configs' split factories (``_partial_: true``) call this, so a split's index is read
    when the datamodule sets the split up, not when the config is instantiated.

    Args:
        reader: A configured reader (``functools.partial`` of ``read_<layout>``) taking ``split``.
        split: ``train`` | ``val`` | ``test``.
        transform: The split's transform, ending with `ResizePad`.
        keep_original_mask: See `ReferringDataset`.
        name: The dataset's name for messages (the split is appended).
    """
    records = reader(split=split)
    name = f"{name} {split}".strip()
    if records:
        # Readers parse the index without opening files (`rsrefseg-prepare` checks them all); one
        # spot check here makes a wrong folder name or file suffix fail now, naming the path tried,
        # rather than in a loader worker at the first batch.
        first = records[0]
        require_file(first.image_path, what=f"{name} image of the first sample {first.sample_id}")
        if isinstance(first.mask, MaskFile):
            require_file(first.mask.path, what=f"{name} mask of the first sample {first.sample_id}")
    return ReferringDataset(records, transform=transform, keep_original_mask=keep_original_mask, name=name)


def _describe(record: ReferringRecord) -> str:
    path = getattr(record.mask, "path", None)
    return str(path) if path is not None else f"(segmentation of {record.file_name})"
