"""Pixels from files and annotations, in one place: RGB images, mask images, COCO RLE / polygons.

Every reader hands over a `MaskSource`; this module is the only code that turns one into pixels, so
a thresholding or RLE rule cannot drift between training, evaluation and ``rsrefseg-prepare``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from rsrefseg.data.records import MASK_RULES, CocoSegmentation, MaskFile, MaskSource, require_choice

#: image modes PIL converts to 8-bit RGB without losing meaning (16-bit / float images would clip)
_RGB_MODES = frozenset({"RGB", "RGBA", "L", "LA", "P", "PA", "1", "CMYK", "YCbCr"})


class NonBinaryMaskWarning(UserWarning):
    """A mask image is not cleanly two-valued; it was binarised by its rule (threshold > 127 or nonzero)."""


def load_image(path: Path) -> np.ndarray:
    """Read an image as RGB.

    Args:
        path: An image file PIL can read (JPEG, PNG, TIFF, …).

    Returns:
        ``H×W×3`` uint8.

    Raises:
        FileNotFoundError: If the file is missing.
        ValueError: If the file cannot be decoded or is not an 8-bit image.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as image:
            if image.mode not in _RGB_MODES:
                raise ValueError(f"image {path} has mode {image.mode!r}; expected an 8-bit RGB / grey image")
            return np.array(image.convert("RGB"))  # a writable copy: torch.from_numpy warns on views
    except (OSError, Image.DecompressionBombError, SyntaxError) as err:
        # PIL reports truncated or corrupt files as OSError / SyntaxError; say which file it was
        raise ValueError(f"unreadable image {path}: {err}") from err


@dataclass(frozen=True)
class MaskReading:
    """A mask image read under a `MaskFile.rule`.

    Attributes:
        mask: ``H×W`` bool foreground.
        two_valued: Whether the values were cleanly binary (see `binarise`).
        values: Up to 8 of the distinct values seen, when not two-valued (for messages).
    """

    mask: np.ndarray
    two_valued: bool
    values: tuple[int, ...] = ()


def read_mask(path: Path, rule: str = "threshold") -> MaskReading:
    """A mask image's foreground under ``rule``.

    Grey and colour images are read as grey values and binarised by `binarise`. A palette image is
    read through its palette as grey: its pixels are palette indices, and which index is the object
    is the palette's business (index 2 or 255 are as common as 1). Under ``threshold`` a palette
    mask must use at most two colours, one of them black (the background); under ``nonzero`` every
    non-black pixel is the object, as the authors' release (OpenCV's grey reading) takes it.

    Args:
        path: The mask image.
        rule: ``threshold`` or ``nonzero``.

    Raises:
        FileNotFoundError: If the file is missing.
        ValueError: If the file cannot be decoded, has several channels after conversion, or is a
            palette mask whose object cannot be told under ``threshold`` (the palette is named).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mask not found: {path}")
    try:
        with Image.open(path) as image:
            if image.mode in ("P", "PA"):
                return _read_palette_mask(image, path, rule)
            if image.mode == "1":
                values = np.asarray(image, dtype=np.uint8) * 255
            else:
                if image.mode in ("RGB", "RGBA", "LA", "CMYK", "YCbCr"):
                    image = image.convert("L")
                values = np.asarray(image)
    except (OSError, Image.DecompressionBombError, SyntaxError) as err:
        raise ValueError(f"unreadable mask {path}: {err}") from err
    if values.ndim != 2:
        raise ValueError(f"mask {path} has shape {values.shape}; expected a single-channel image")
    mask, two_valued = binarise(values, rule)
    return MaskReading(mask, two_valued, () if two_valued else _some_values(values))


def _read_palette_mask(image: Image.Image, path: Path, rule: str) -> MaskReading:
    indices = np.asarray(image.getchannel(0) if image.mode == "PA" else image)
    grey = np.asarray(image.convert("L"))
    used = np.unique(indices).tolist()
    greys = sorted(set(np.unique(grey).tolist()))
    clean = len(greys) == 1 or (len(greys) == 2 and greys[0] == 0)
    if rule == "threshold" and not clean:
        palette = image.getpalette() or []
        colours = {i: tuple(palette[3 * i : 3 * i + 3]) for i in used[:8]}
        raise ValueError(
            f"palette mask {path} uses indices {used[:8]}{'…' if len(used) > 8 else ''} with colours "
            f"{colours}: not one object colour on black, so which is the object is unclear; "
            "data.mask_rule=nonzero takes every non-black pixel as the object (the release's reading)"
        )
    return MaskReading(grey != 0, clean, () if clean else tuple(used[:8]))


def binarise(values: np.ndarray, rule: str = "threshold") -> tuple[np.ndarray, bool]:
    """Foreground of a mask image's values, and whether the values were cleanly two-valued.

    ``threshold`` (our default): ``{0, 255}`` and ``{0, 1}`` are both taken as binary (a 0 / 1 mask
    thresholded at 127 would be silently empty); anything else is thresholded at > 127 and reported
    as not two-valued. ``nonzero`` (the authors' release): every nonzero value is the object; more
    than two distinct values are reported as not two-valued.

    Args:
        values: ``H×W`` integer mask values.
        rule: ``threshold`` or ``nonzero``.

    Returns:
        ``H×W`` bool foreground and True when the values were cleanly two-valued.
    """
    require_choice("mask_rule", rule, MASK_RULES)
    present = set(np.unique(values).tolist())
    if rule == "nonzero":
        return values != 0, len(present - {0}) <= 1
    if present <= {0, 1}:
        return values == 1, True
    return values > 127, present <= {0, 255}


def _some_values(values: np.ndarray) -> tuple[int, ...]:
    return tuple(int(v) for v in np.unique(values)[:8])


def resize_mask_nearest(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a mask to ``size`` by nearest neighbour, as the authors' release does (OpenCV's rule).

    Output pixel ``(y, x)`` takes input pixel ``(floor(y·h/H), floor(x·w/W))``.

    Args:
        mask: ``h×w`` bool.
        size: ``(H, W)``.

    Returns:
        ``H×W`` bool.
    """
    height, width = (int(v) for v in size)
    rows = np.minimum((np.arange(height) * (mask.shape[0] / height)).astype(np.int64), mask.shape[0] - 1)
    cols = np.minimum((np.arange(width) * (mask.shape[1] / width)).astype(np.int64), mask.shape[1] - 1)
    return mask[rows[:, None], cols[None, :]]


def decode_segmentation(segmentation: Any, *, size: tuple[int, int] | None = None) -> np.ndarray:
    """Rasterise COCO segmentation JSON: one RLE, a list of RLEs (their union) or polygons.

    Args:
        segmentation: An RLE dict ``{"size": [h, w], "counts": str | bytes | list}``, a non-empty list
            of such dicts, or a non-empty list of polygons ``[x1, y1, x2, y2, …]``.
        size: ``(H, W)`` of the image; required for polygons, checked against every RLE's size.

    Returns:
        ``H×W`` bool mask.

    Raises:
        ValueError: If the JSON is not one of those forms, sizes disagree, or pycocotools rejects it.
    """
    if isinstance(segmentation, Mapping):
        return _decode_rle(segmentation, size)
    if not isinstance(segmentation, list | tuple) or not segmentation:
        raise ValueError(
            f"segmentation of type {type(segmentation).__name__} ({_short(segmentation)}); expected an "
            "RLE dict, a non-empty list of RLE dicts or a non-empty list of polygons"
        )
    if all(isinstance(part, Mapping) for part in segmentation):
        masks = [_decode_rle(part, size) for part in segmentation]
        shapes = {m.shape for m in masks}
        if len(shapes) != 1:
            raise ValueError(f"the RLEs of one segmentation list have different sizes {sorted(shapes)}")
        return np.logical_or.reduce(masks)
    if all(isinstance(part, list | tuple) for part in segmentation):
        if size is None:
            raise ValueError("polygon segmentation needs the image size; none was given")
        polygons = [[float(v) for v in poly] for poly in segmentation]
        bad = [i for i, poly in enumerate(polygons) if len(poly) < 6 or len(poly) % 2]
        if bad:
            raise ValueError(f"polygons {bad} need an even number (>= 6) of coordinates")
        rles = mask_utils.frPyObjects(polygons, int(size[0]), int(size[1]))
        return mask_utils.decode(mask_utils.merge(rles)).astype(bool)
    raise ValueError(f"segmentation list mixes RLE dicts and polygons ({_short(segmentation)})")


def _decode_rle(rle: Mapping[str, Any], size: tuple[int, int] | None) -> np.ndarray:
    if "size" not in rle or "counts" not in rle:
        raise ValueError(f"RLE without 'size' / 'counts' keys: {_short(rle)}")
    height, width = (int(v) for v in rle["size"])
    if size is not None and (height, width) != tuple(size):
        raise ValueError(f"RLE size {[height, width]} differs from the image size {list(size)}")
    counts = rle["counts"]
    try:
        if isinstance(counts, list):  # uncompressed RLE: convert to the compressed form first
            runs = [int(c) for c in counts]
            compressed = mask_utils.frPyObjects({"size": [height, width], "counts": runs}, height, width)
        else:
            counts = counts.encode() if isinstance(counts, str) else bytes(counts)
            runs = _compressed_runs(counts)
            compressed = {"size": [height, width], "counts": counts}
        # pycocotools decodes runs that do not cover the image without complaint, leaving the rest
        # of its buffer uninitialised: a corrupt string would become a random mask
        if any(r < 0 for r in runs) or sum(runs) != height * width:
            raise ValueError(f"its runs cover {sum(runs)} pixels, not {height}×{width}={height * width}")
        mask = mask_utils.decode(compressed)
    except (TypeError, ValueError) as err:
        raise ValueError(f"undecodable RLE ({_short(rle)}): {err}") from err
    if mask.shape != (height, width):
        raise ValueError(f"RLE decodes to {mask.shape}, but states size {[height, width]}")
    return mask.astype(bool)


def _compressed_runs(counts: bytes) -> list[int]:
    """The run lengths of a compressed COCO RLE string (pycocotools' ``rleFrString``, checked).

    Each run is a little-endian sequence of 5-bit groups in characters ``48 + value`` (bit 6: more
    groups follow; bit 5 of the last group: negative); from the third run on, values are deltas
    to the run two before.
    """
    runs: list[int] = []
    position = 0
    while position < len(counts):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(counts):
                raise ValueError("the string ends inside a run")
            code = counts[position] - 48
            if not 0 <= code < 64:
                raise ValueError(f"byte {counts[position]!r} at {position} is not an RLE character")
            value |= (code & 0x1F) << shift
            more = bool(code & 0x20)
            position += 1
            shift += 5
            if not more and code & 0x10:
                value -= 1 << shift  # sign-extend
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def decode_mask(source: MaskSource) -> np.ndarray:
    """The ground-truth mask of a record, at the size its source holds it.

    Mask images that are not cleanly two-valued are binarised by their rule with a
    `NonBinaryMaskWarning` naming the file. RLEs decode at their own size and polygons at the
    stated size: whether that is the image's size is the dataset's check (``data.size_mismatch``).

    Args:
        source: A `MaskFile` or a `CocoSegmentation`.

    Returns:
        ``H×W`` bool mask.
    """
    if isinstance(source, MaskFile):
        reading = read_mask(source.path, source.rule)
        if not reading.two_valued:
            what = "thresholded at > 127" if source.rule == "threshold" else "nonzero taken as the object"
            warnings.warn(
                f"mask {source.path} is not two-valued (values {list(reading.values)}…); {what} "
                f"(data.mask_rule={source.rule})",
                NonBinaryMaskWarning,
                stacklevel=2,
            )
        return reading.mask
    if isinstance(source, CocoSegmentation):
        polygons = _is_polygon_list(source.segmentation)
        return decode_segmentation(source.segmentation, size=source.size if polygons else None)
    raise TypeError(f"mask source of type {type(source).__name__}; expected MaskFile or CocoSegmentation")


def _is_polygon_list(segmentation: Any) -> bool:
    return (
        isinstance(segmentation, list | tuple)
        and bool(segmentation)
        and all(isinstance(part, list | tuple) for part in segmentation)
    )


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """``H×W`` bool mask → one compressed COCO RLE with str counts (JSON-ready)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
