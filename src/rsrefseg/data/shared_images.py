"""Each distinct image of a batch once: what lets the encoders run once for an image's sentences.

Two samples share an image only when their transformed image tensors are equal element for
element. So a random augmentation is respected whatever it is: two sentences of one image under
different flips (`~rsrefseg.data.transforms.HorizontalFlip` mirrors the sentence too) are two
images and are encoded twice; under the same draw they are one. Equality, not an image id, is what
makes sharing exact: the encoders see the very pixels each sentence's sample holds.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

#: elements a fingerprint reads (a strided subsample): equal images are confirmed in full after
FINGERPRINT_ELEMENTS = 4096


def unique_images(images: Sequence[Tensor]) -> tuple[list[Tensor], Tensor]:
    """The distinct images among ``images`` (first appearances, in order) and which one each input is.

    A cheap fingerprint finds the candidates; ``torch.equal`` decides, so a collision never merges
    two different images.

    Args:
        images: B tensors (3×S×S).

    Returns:
        The N distinct images, and ``image_index`` (B long) with ``images[i]`` equal to
        ``unique[image_index[i]]``.
    """
    unique: list[Tensor] = []
    by_fingerprint: dict[tuple, list[int]] = {}
    index: list[int] = []
    for image in images:
        candidates = by_fingerprint.setdefault(_fingerprint(image), [])
        match = next((u for u in candidates if torch.equal(unique[u], image)), None)
        if match is None:
            match = len(unique)
            candidates.append(match)
            unique.append(image)
        index.append(match)
    return unique, torch.tensor(index, dtype=torch.long)


def _fingerprint(image: Tensor) -> tuple:
    flat = image.reshape(-1)
    step = max(1, flat.numel() // FINGERPRINT_ELEMENTS)
    return tuple(image.shape), image.dtype, float(flat[::step].double().sum())
