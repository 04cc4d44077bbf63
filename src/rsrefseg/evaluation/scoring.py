"""From network logits to the masks that are scored, at the original image size or the input size.

Items carry ``content_size`` (h, w): the resized image occupies the top-left h×w of the S×S input
canvas and the rest is padding. Scoring never looks at padding:

- ``original`` (default, docs/metrics.md): logits → bilinear to S×S → crop h×w → bilinear to the
  original H×W → sigmoid > threshold, against the original-size ground truth ``original_mask``.
- ``input`` (the LAVT / RMSIN convention, usually with inclusive Pr@X): the cropped h×w
  prediction against the input-size ground truth ``mask`` cropped the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Resolution = Literal["original", "input"]
RESOLUTIONS = ("original", "input")


def check_resolution(resolution: str) -> None:
    if resolution not in RESOLUTIONS:
        raise ValueError(f"metrics.resolution must be one of {RESOLUTIONS}, got {resolution!r}")


def to_original_size(
    maps: Tensor,
    *,
    canvas_size: int,
    content_sizes: Sequence[Sequence[int]],
    output_sizes: Sequence[Sequence[int]],
) -> list[Tensor]:
    """Maps over the input canvas → each image's content, cropped and resized to its original size.

    Bilinear to S×S, crop the top-left h×w content, bilinear to H×W: the path every prediction takes
    back to the image (scored masks, ``rsrefseg.predict`` probabilities and its explanation maps).

    Args:
        maps: B×C×m×m float maps covering the S×S input canvas (logits, similarities, …).
        canvas_size: S.
        content_sizes: B (h, w) of the image content in the canvas (the rest is padding).
        output_sizes: B (H, W) to resize the cropped maps to.

    Returns:
        B float32 tensors of shape C×H_i×W_i.
    """
    canvas = maps.float()
    if canvas.shape[-2:] != (canvas_size, canvas_size):
        canvas = F.interpolate(canvas, size=(canvas_size, canvas_size), mode="bilinear", align_corners=False)
    out = []
    for item, (h, w), (out_h, out_w) in zip(canvas, content_sizes, output_sizes, strict=True):
        content = item[None, :, : int(h), : int(w)]
        size = (int(out_h), int(out_w))
        if content.shape[-2:] != size:
            content = F.interpolate(content, size=size, mode="bilinear", align_corners=False)
        out.append(content[0])
    return out


def logit_threshold(threshold: float) -> float:
    """The logit above which a pixel is foreground: sigmoid(logit) > ``threshold``."""
    return torch.logit(torch.tensor(threshold)).item()


def predict_masks(
    logits: Tensor,
    *,
    canvas_size: int,
    content_sizes: Sequence[Sequence[int]],
    output_sizes: Sequence[Sequence[int]],
    threshold: float = 0.5,
) -> list[Tensor]:
    """Low-resolution logits over the input canvas → one boolean mask per sample.

    Args:
        logits: B×1×m×m mask logits covering the S×S input canvas.
        canvas_size: S.
        content_sizes: B (h, w) of the image content in the canvas (the rest is padding).
        output_sizes: B (H, W) to resize the cropped prediction to.
        threshold: probability above which a pixel is foreground.

    Returns:
        B boolean tensors of shape H_i×W_i.
    """
    cut = logit_threshold(threshold)
    resized = to_original_size(
        logits, canvas_size=canvas_size, content_sizes=content_sizes, output_sizes=output_sizes
    )
    return [item[0] > cut for item in resized]


def _content_size(item: Mapping[str, Any], index: int | None, canvas_size: int) -> tuple[int, int]:
    sizes = item.get("content_size")
    if sizes is None:
        return canvas_size, canvas_size
    size = sizes if index is None else sizes[index]
    return int(size[0]), int(size[1])


def score_batch(
    logits: Tensor, batch: Mapping[str, Any], *, resolution: Resolution, threshold: float = 0.5
) -> tuple[list[Tensor], list[Tensor]]:
    """Predictions and targets of a collated batch at the chosen resolution (see the module docstring).

    Raises:
        ValueError: ``resolution`` is ``original`` but the batch carries no ``original_mask``.
    """
    check_resolution(resolution)
    canvas = batch["image"].shape[-1]
    count = logits.shape[0]  # one per sentence: a batch may carry each image once for several
    contents = [_content_size(batch, i, canvas) for i in range(count)]
    if resolution == "original":
        if batch.get("original_mask") is None:
            # scoring the input-size masks instead would report input-size numbers as original-size ones
            raise ValueError(
                "metrics.resolution=original needs items with 'original_mask' (the ground truth at the "
                "original size); this batch has none: score with metrics.resolution=input"
            )
        targets = [t.bool().reshape(t.shape[-2:]) for t in batch["original_mask"]]
    else:
        targets = [m[0, :h, :w] > 0.5 for m, (h, w) in zip(batch["mask"], contents, strict=True)]
    preds = predict_masks(
        logits,
        canvas_size=canvas,
        content_sizes=contents,
        output_sizes=[t.shape[-2:] for t in targets],
        threshold=threshold,
    )
    return preds, targets
