"""Sample transforms: augmentations that keep the sentence true, then `ResizePad` to the model input.

A transform maps a sample dict to a new one. Going in: ``image`` float32 3×H×W in [0, 1], ``mask``
float32 1×H×W in {0, 1}, ``sentence`` str. `ResizePad` must come last: it adds ``valid``,
``content_size`` and ``original_mask`` (the ground truth as the metrics see it).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F

Sample = dict[str, Any]


class Compose:
    """Apply transforms in order.

    Args:
        transforms: Callables ``sample -> sample``.
    """

    def __init__(self, transforms: Sequence[Callable[[Sample], Sample]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, sample: Sample) -> Sample:
        for transform in self.transforms:
            sample = transform(sample)
        return sample

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


#: how `ResizePad` resizes the mask to the model input
MaskResize = Literal["bilinear", "nearest"]
MASK_RESIZES: tuple[str, ...] = get_args(MaskResize)


class ResizePad:
    """Resize so the long side is ``size`` (aspect kept), place top-left on a zero ``size``×``size`` canvas.

    The image is resized bilinearly with antialiasing. The mask, by default, the same way and then
    thresholded at 0.5, so that it stays binary and a thin object shrunk below a pixel keeps its
    majority pixels; ``mask_resize="nearest"`` picks the nearest source pixel instead, as the
    authors' release does (OpenCV's rule). Pixels outside the content are padding: ``valid`` is
    False there and losses / metrics must ignore them.

    Args:
        size: Side ``S`` of the square model input.
        mask_resize: ``bilinear`` (antialiased, then >= 0.5) or ``nearest`` (``data.mask_resize``).

    Returns (from ``__call__``):
        The sample with ``image`` 3×S×S, ``mask`` 1×S×S (0 on padding), ``valid`` bool 1×S×S,
        ``content_size`` ``(h, w)`` of the resized content, and ``original_mask`` bool H×W —
        the incoming mask, i.e. the ground truth at the original size.
    """

    def __init__(self, *, size: int, mask_resize: MaskResize = "bilinear") -> None:
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"size={size!r}; expected a positive integer")
        if mask_resize not in MASK_RESIZES:
            raise ValueError(f"mask_resize={mask_resize!r}; expected one of {list(MASK_RESIZES)}")
        self.size = size
        self.mask_resize = mask_resize

    def content_size(self, height: int, width: int) -> tuple[int, int]:
        """``(h, w)`` of an ``height``×``width`` image resized so that its long side is ``size``."""
        scale = self.size / max(height, width)
        return max(1, min(self.size, round(height * scale))), max(1, min(self.size, round(width * scale)))

    def image(self, image: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """The image half alone (prediction has no mask): 3×H×W in [0, 1] → (3×S×S canvas, (h, w)).

        ``(h, w)`` is the resized content's size; the canvas is zero outside its top-left h×w.
        """
        h, w = self.content_size(*image.shape[-2:])
        if (h, w) != tuple(image.shape[-2:]):
            image = _resize(image, (h, w)).clamp_(0.0, 1.0)
        canvas = image.new_zeros(3, self.size, self.size)
        canvas[:, :h, :w] = image
        return canvas, (h, w)

    def __call__(self, sample: Sample) -> Sample:
        image, mask = sample["image"], sample["mask"]
        if image.shape[-2:] != mask.shape[-2:]:
            raise ValueError(f"image {tuple(image.shape)} and mask {tuple(mask.shape)} differ in size")
        canvas, (h, w) = self.image(image)
        if (h, w) != tuple(image.shape[-2:]):
            if self.mask_resize == "nearest":
                resized_mask = F.interpolate(mask[None], size=(h, w), mode="nearest")[0]
            else:
                resized_mask = (_resize(mask, (h, w)) >= 0.5).float()
        else:
            resized_mask = mask
        s = self.size
        target = mask.new_zeros(1, s, s)
        target[:, :h, :w] = resized_mask
        valid = torch.zeros(1, s, s, dtype=torch.bool)
        valid[:, :h, :w] = True
        return {
            **sample,
            "image": canvas,
            "mask": target,
            "valid": valid,
            "content_size": (h, w),
            "original_mask": mask[0] > 0.5,
        }

    def __repr__(self) -> str:
        return f"ResizePad(size={self.size}, mask_resize={self.mask_resize!r})"


def _resize(tensor: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(tensor[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]


# --------------------------------------------------------------------------------------------------
# Horizontal flip with the sentence mirrored
# --------------------------------------------------------------------------------------------------

# "right" is also an intensifier ("right next to the road"): left alone before these words
_INTENSIFIED = (
    r"(?!\s+(?:next|beside|behind|above|below|under|across|by|near"
    r"|(?:at|in)\s+the\s+(?:centre|center|middle)))"
)
_MIRROR = {
    "left": "right",
    "leftmost": "rightmost",
    "lefthand": "righthand",
    "leftward": "rightward",
    "leftwards": "rightwards",
    "west": "east",
    "western": "eastern",
    "westernmost": "easternmost",
    "westward": "eastward",
    "westwards": "eastwards",
    "northwest": "northeast",
    "northwestern": "northeastern",
    "southwest": "southeast",
    "southwestern": "southeastern",
}
_MIRROR.update({b: a for a, b in list(_MIRROR.items())})
# longest first so that "leftmost" is not read as "left" + "most"; \b splits "top-left" at the hyphen.
# Bare "right" has its own branch (with the intensifier guard), so it is not among these words.
_WORDS = "|".join(sorted((re.escape(w) for w in _MIRROR if w != "right"), key=len, reverse=True))
_PATTERN = re.compile(rf"\b(?:(?P<right>right){_INTENSIFIED}|(?P<word>{_WORDS}))\b", re.IGNORECASE)


def mirror_sentence(sentence: str) -> str:
    """Swap the left / right (west / east) words of a sentence, as a horizontal flip of the image requires.

    Covers ``left``/``right`` alone and in compounds (``top-left``, ``left of``, ``lower right``),
    ``leftmost``/``rightmost``, ``left-hand``, ``leftward(s)`` and the cardinal ``west``/``east``
    family (``northwest``, ``westernmost``, …). Case is kept (``Left`` → ``Right``). ``right`` as an
    intensifier (``right next to``, ``right above``, ``right in the middle``) is not swapped.

    Args:
        sentence: The expression.

    Returns:
        The mirrored expression.
    """

    def swap(match: re.Match[str]) -> str:
        word = match.group(0)
        mirrored = _MIRROR[word.lower()]
        if word.isupper() and len(word) > 1:
            return mirrored.upper()
        if word[0].isupper():
            return mirrored[0].upper() + mirrored[1:]
        return mirrored

    return _PATTERN.sub(swap, sentence)


class HorizontalFlip:
    """Flip image and mask left ↔ right with probability ``p``, mirroring the sentence's directions.

    Off by default (the paper trains without flips). Draws from torch's generator, which Lightning
    seeds per worker (``seed_everything(workers=True)``).

    Args:
        p: Probability of flipping a sample.
    """

    def __init__(self, *, p: float = 0.0) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p={p!r}; expected a probability in [0, 1]")
        self.p = float(p)

    def __call__(self, sample: Sample) -> Sample:
        if self.p == 0.0 or torch.rand(()).item() >= self.p:
            return sample
        return {
            **sample,
            "image": sample["image"].flip(-1),
            "mask": sample["mask"].flip(-1),
            "sentence": mirror_sentence(sample["sentence"]),
        }

    def __repr__(self) -> str:
        return f"HorizontalFlip(p={self.p})"


def check_output(sample: Mapping[str, Any], transform: object) -> None:
    """Fail clearly when a transform pipeline did not end with `ResizePad`."""
    missing = [key for key in ("valid", "content_size", "original_mask") if key not in sample]
    if missing:
        raise ValueError(f"transform {transform!r} produced no {missing}; end the pipeline with ResizePad")
