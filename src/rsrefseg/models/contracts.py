"""Construction-time contracts between a config and the model it builds, and shared input handling."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch.nn.functional as F
from torch import Tensor


def check_dimensions(component: str, stated: Mapping[str, Any], actual: Mapping[str, Any]) -> None:
    """Fail at build time when a config's stated dimensions disagree with the built module.

    Raises:
        ValueError: naming the component and every (stated, actual) pair that differs.
    """
    wrong = {k: (stated[k], actual[k]) for k in stated if stated[k] != actual[k]}
    if wrong:
        raise ValueError(f"{component} config disagrees with the built model (stated, actual): {wrong}")


def resize_square(images: Tensor, size: int, *, antialias: bool = True) -> Tensor:
    """B×3×H×W → B×3×size×size (bilinear, antialiased unless told not); a no-op when already that size."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=antialias)
