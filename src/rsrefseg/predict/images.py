"""Any image a user hands the predictor → the float tensor the evaluation path starts from.

A file is read exactly as the datasets read it (:func:`rsrefseg.data.decode.load_image`, then
``/ 255``), so a prediction on a file equals what ``rsrefseg-eval`` scores for it. That includes
pixels as stored: a JPEG's EXIF orientation tag is not applied (training and evaluation read files
the same way), so the mask lines up with the stored pixels; a warning says so when a file has one.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from rsrefseg.data.decode import load_image

#: what ``Predictor.predict`` accepts as an image
ImageInput = str | Path | Image.Image | np.ndarray | torch.Tensor

ACCEPTED = (
    "a file path, a PIL image, a numpy H×W×3 (or H×W grey) array of uint8 or of floats in [0, 1], "
    "or a torch 3×H×W float tensor in [0, 1]"
)


class ExifOrientationWarning(UserWarning):
    """An image file carries an EXIF orientation that reading does not apply (pixels as stored)."""


#: the EXIF tag that tells viewers to rotate / mirror the stored pixels
EXIF_ORIENTATION = 0x0112


def exif_orientation_note(path: str | Path) -> str | None:
    """What to tell the user when ``path`` carries an EXIF orientation other than "as stored"."""
    try:
        with Image.open(path) as image:
            orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    except (OSError, SyntaxError, ValueError):
        return None  # decoding the pixels reports an unreadable file; a broken EXIF block is no rotation
    if orientation in (1, None):
        return None
    return (
        f"EXIF orientation {orientation} not applied: pixels are read as stored, as in training and "
        "evaluation, and the mask is aligned with them (a viewer that rotates by EXIF shows the image "
        "turned); run PIL.ImageOps.exif_transpose on the image first to predict on it upright"
    )


def to_image_tensor(image: ImageInput, *, name: str = "image", warn_exif: bool = True) -> torch.Tensor:
    """Read / convert one image.

    Args:
        image: see :data:`ACCEPTED`.
        name: how messages call it (e.g. ``image 3``).
        warn_exif: warn (:class:`ExifOrientationWarning`) when a file has an EXIF orientation.

    Returns:
        3×H×W float32 in [0, 1] on the CPU.

    Raises:
        FileNotFoundError: a path that is not a file.
        ValueError: an unreadable file, or an array of the wrong shape, type or range.
    """
    if isinstance(image, (str, Path)):
        path = Path(image).expanduser()
        tensor = _from_uint8(load_image(path))
        note = exif_orientation_note(path) if warn_exif else None
        if note:
            warnings.warn(f"{path}: {note}", ExifOrientationWarning, stacklevel=2)
        return tensor
    if isinstance(image, Image.Image):
        return _from_uint8(np.array(image.convert("RGB")))
    if isinstance(image, np.ndarray):
        return _from_array(image, name)
    if isinstance(image, torch.Tensor):
        return _from_tensor(image, name)
    raise TypeError(f"{name} is a {type(image).__name__}; expected {ACCEPTED}")


def _from_uint8(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).float().div_(255.0)


def _from_array(array: np.ndarray, name: str) -> torch.Tensor:
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (3, 4):
        raise ValueError(f"{name} has shape {array.shape}; expected H×W×3 (RGB), H×W×4 (RGBA) or H×W (grey)")
    array = array[..., :3]
    if array.dtype == np.uint8:
        return _from_uint8(array)
    if np.issubdtype(array.dtype, np.floating):
        return _from_tensor(
            torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).permute(2, 0, 1), name
        )
    raise ValueError(
        f"{name} has dtype {array.dtype}; expected uint8 or floats in [0, 1] (scale 16-bit imagery "
        "first, or give a GeoTIFF to the raster path, which stretches it)"
    )


def _from_tensor(tensor: torch.Tensor, name: str) -> torch.Tensor:
    if tensor.ndim != 3 or tensor.shape[0] != 3:
        raise ValueError(f"{name} is a tensor of shape {tuple(tensor.shape)}; expected 3×H×W")
    if not tensor.is_floating_point():
        raise ValueError(f"{name} is a {tensor.dtype} tensor; expected floats in [0, 1]")
    tensor = tensor.detach().float().cpu()
    if tensor.numel() == 0 or not torch.isfinite(tensor).all():
        raise ValueError(f"{name} is empty or holds NaN / inf values")
    low, high = float(tensor.min()), float(tensor.max())
    if low < 0.0 or high > 1.0:
        raise ValueError(
            f"{name} has values in [{low:g}, {high:g}]; expected [0, 1] (divide 8-bit values by 255)"
        )
    return tensor.contiguous()


def describe(image: Any) -> str:
    """A short name of an image input, for summaries and messages."""
    if isinstance(image, (str, Path)):
        return str(image)
    shape = getattr(image, "shape", None) or getattr(image, "size", None)
    return f"<{type(image).__name__} {tuple(shape) if shape is not None else ''}>"
