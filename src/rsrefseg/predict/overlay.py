"""A mask drawn over its image: the mask's outline in one colour and the sentence in a banner below.

`render_overlay` returns the picture as an array, `save_png` writes it (or a mask) as a PNG. Only
numpy and Pillow are used, so rendering works where matplotlib is not installed (servers, the CLI).
The image rows of the result are the input image itself except on the outline, so an overlay can
be checked pixel by pixel against its mask.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from rsrefseg.io import atomic_open

__all__ = ["mask_outline", "render_overlay", "save_png", "wrap_text"]

DEFAULT_COLOR = (255, 64, 0)
BANNER_BACKGROUND = (24, 24, 24)
BANNER_TEXT = (255, 255, 255)
_MARGIN = 4


def mask_outline(mask: np.ndarray, thickness: int = 1) -> np.ndarray:
    """The mask's inner boundary: mask pixels within ``thickness`` steps of a pixel outside it.

    Neighbours are the 8 surrounding pixels; outside the image counts as outside the mask, so a
    mask touching the image edge is outlined along that edge too.

    Args:
        mask: ``H×W`` bool.
        thickness: Boundary width in pixels (at least 1).

    Returns:
        ``H×W`` bool, True on the outline (a subset of ``mask``).
    """
    if thickness < 1:
        raise ValueError(f"thickness={thickness!r}; expected an integer >= 1")
    interior = mask
    for _ in range(thickness):
        padded = np.pad(interior, 1, constant_values=False)
        height, width = interior.shape
        eroded = np.ones_like(interior)
        for dy in range(3):
            for dx in range(3):
                eroded &= padded[dy : dy + height, dx : dx + width]
        interior = eroded
    return mask & ~interior


def wrap_text(text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: int) -> list[str]:
    """Break ``text`` into lines no wider than ``width`` pixels in ``font``, at spaces where possible.

    Runs of whitespace count as one space; a word wider than a line on its own is split between
    characters. Returns at least one (possibly empty) line.
    """
    lines: list[str] = []
    line = ""
    for word in text.split():
        candidate = f"{line} {word}" if line else word
        if font.getlength(candidate) <= width:
            line = candidate
            continue
        if line:
            lines.append(line)
        line = ""
        for char in word:  # only a word too wide for an empty line is cut
            if line and font.getlength(line + char) > width:
                lines.append(line)
                line = ""
            line += char
    lines.append(line)
    return lines


def render_overlay(
    image: np.ndarray,
    mask: np.ndarray,
    sentence: str,
    *,
    color: tuple[int, int, int] = DEFAULT_COLOR,
    thickness: int | None = None,
    scale: int = 1,
) -> np.ndarray:
    """Draw the mask's outline on the image and the sentence, wrapped, in a banner below it.

    Args:
        image: ``H×W×3`` uint8 RGB.
        mask: ``H×W`` bool, the mask to outline (an empty mask draws no outline).
        sentence: The text written in the banner.
        color: RGB of the outline.
        thickness: Outline width in output pixels; default ``max(1, round(min(H, W) * scale / 256))``,
            so the outline stays visible on large images.
        scale: Integer magnification (nearest neighbour) applied before drawing, so that a small
            image (64 px) gets a readable banner and a crisp outline.

    Returns:
        ``(H·scale + B)×(W·scale)×3`` uint8: rows ``[0, H·scale)`` are the (magnified) image, equal
        to it except on the outline (`mask_outline`), which is ``color``; the ``B`` rows below are
        the banner.

    Raises:
        ValueError: If the image or mask has the wrong shape or dtype, or they differ in size.
        TypeError: If ``sentence`` is not a string.
    """
    image, mask = _checked(image, mask)
    if not isinstance(sentence, str):
        raise TypeError(f"sentence must be a str, got {type(sentence).__name__}")
    color = _checked_color(color)
    if not isinstance(scale, int) or isinstance(scale, bool) or scale < 1:
        raise ValueError(f"scale={scale!r}; expected an integer >= 1")
    if scale > 1:
        image = image.repeat(scale, axis=0).repeat(scale, axis=1)
        mask = mask.repeat(scale, axis=0).repeat(scale, axis=1)
    height, width = mask.shape
    if thickness is None:
        thickness = max(1, round(min(height, width) / 256))
    picture = image.copy()
    picture[mask_outline(mask, thickness)] = color
    banner = _banner(sentence, width)
    return np.concatenate([picture, banner], axis=0)


def _banner(sentence: str, width: int) -> np.ndarray:
    """The sentence wrapped to ``width`` pixels, white on dark: ``B×width×3`` uint8."""
    font = ImageFont.load_default(size=int(np.clip(round(width / 24), 12, 32)))
    if not isinstance(font, ImageFont.FreeTypeFont):
        # Pillow's fallback bitmap font encodes text as Latin-1 and raises on anything else
        sentence = sentence.encode("latin-1", "replace").decode("latin-1")
    lines = wrap_text(sentence, font, max(1, width - 2 * _MARGIN))
    ascent, descent = _font_metrics(font)
    line_height = ascent + descent + 2
    banner = Image.new("RGB", (width, 2 * _MARGIN + line_height * len(lines)), BANNER_BACKGROUND)
    draw = ImageDraw.Draw(banner)
    for row, line in enumerate(lines):
        draw.text((_MARGIN, _MARGIN + row * line_height), line, fill=BANNER_TEXT, font=font)
    return np.asarray(banner, dtype=np.uint8)


def _font_metrics(font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> tuple[int, int]:
    if isinstance(font, ImageFont.FreeTypeFont):
        return font.getmetrics()
    top, bottom = font.getbbox("Ag")[1::2]
    return int(bottom), 0 if top >= 0 else int(-top)


def _checked(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    image, mask = np.asarray(image), np.asarray(mask)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"image must be an H×W×3 uint8 RGB array, got shape {image.shape} dtype {image.dtype}; "
            "convert with np.asarray(PIL.Image.open(path).convert('RGB')) "
            "or (x * 255).round().astype(np.uint8)"
        )
    if mask.ndim != 2 or mask.dtype != np.bool_:
        raise ValueError(
            f"mask must be an H×W bool array, got shape {mask.shape} dtype {mask.dtype}; "
            "threshold a probability map first (probability >= 0.5)"
        )
    if mask.shape != image.shape[:2]:
        raise ValueError(
            f"mask is {mask.shape[0]}×{mask.shape[1]} but the image is {image.shape[0]}×{image.shape[1]}; "
            "they must be the same size"
        )
    return image, mask


def _checked_color(color: tuple[int, int, int]) -> tuple[int, int, int]:
    values = tuple(color)
    if len(values) != 3 or not all(isinstance(v, int | np.integer) and 0 <= v <= 255 for v in values):
        raise ValueError(f"color={color!r}; expected three integers in [0, 255] (R, G, B)")
    return values  # type: ignore[return-value]


def save_png(path: str | os.PathLike[str], array: np.ndarray, *, force: bool = False) -> Path:
    """Write an RGB picture or a mask as a PNG, atomically, refusing to replace a file unless ``force``.

    Args:
        path: Output file; its name must end in ``.png``. Missing parent folders are created.
        array: ``H×W×3`` uint8 (RGB), ``H×W`` uint8 (grey) or ``H×W`` bool (written 0 / 255).
        force: Replace an existing file.

    Returns:
        The path written.

    Raises:
        FileExistsError: If ``path`` exists and ``force`` is False.
        ValueError: If the name does not end in ``.png``, ``path`` is a folder, or the array is not
            one of the shapes / dtypes above.
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"{path}: expected a file name ending in .png")
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give a file name ending in .png")
    if path.exists() and not force:
        raise FileExistsError(
            f"{path} exists; choose another name or pass force=True (--force) to replace it"
        )
    array = np.asarray(array)
    if array.dtype == np.bool_ and array.ndim == 2:
        picture = Image.fromarray(array.astype(np.uint8) * 255)
    elif array.dtype == np.uint8 and (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
        picture = Image.fromarray(array)
    else:
        raise ValueError(
            f"{path}: cannot write an array of shape {array.shape} dtype {array.dtype}; "
            "expected H×W×3 uint8, H×W uint8 or H×W bool"
        )
    with atomic_open(path) as handle:
        picture.save(handle, format="PNG")
    return path
