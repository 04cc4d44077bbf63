"""Any GDAL raster seen as RGB float tiles in [0, 1] plus a valid-pixel mask, read window by window.

Band selection: 1-based band indices (``"3,2,1"`` or ``(3, 2, 1)``); one band is repeated to RGB; by
default the first three bands that are not alpha, or the first band repeated when fewer remain.

Scaling to the model's [0, 1] input (``scaling=``):

``auto``
    uint8 → ``/ 255`` (the model was trained on 8-bit imagery); any other type → ``percentile``.
``percentile`` or ``percentile:LOW,HIGH``
    per band, the LOW / HIGH percentiles (default 2 / 98) of the valid pixels map to 0 / 1, clipped.
``minmax``
    per band, the smallest / largest valid value map to 0 / 1.
``none``
    values are already in [0, 1]; they are only clipped.
``range:LO,HI``
    the fixed values LO / HI map to 0 / 1 in every band (e.g. ``range:0,10000`` for reflectance).

Percentiles and min/max come from one decimated read of at most ~1024² pixels (``out_shape``, which
GDAL serves from overviews when the file has them), so the raster is never loaded whole.

Valid pixels: those valid in any selected band's GDAL mask (a nodata value, an internal mask or an
alpha band; ``read_masks``; as GDAL's dataset mask, a pixel is nodata only when all its bands are)
and, for float bands, finite in every band — a NaN nodata never compares equal to itself,
so it is tested with ``isfinite`` rather than ``==``. Invalid pixels are set to 0 in the RGB tile.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import ColorInterp, Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.windows import Window

#: the decimated read for percentiles / min-max holds at most this many pixels per band
STATISTICS_PIXELS = 1024 * 1024

SCALING_METHODS = ("auto", "percentile", "minmax", "none", "range")
_SCALING_HELP = "expected auto, percentile, percentile:LOW,HIGH, minmax, none or range:LO,HI"


@dataclass(frozen=True)
class Scaling:
    """How raw band values become [0, 1].

    Attributes:
        method: One of :data:`SCALING_METHODS`.
        low: The low percentile (``percentile``) or value (``range``); unused otherwise.
        high: The high percentile or value.
    """

    method: str
    low: float = 2.0
    high: float = 98.0


def parse_scaling(spec: str | Scaling) -> Scaling:
    """Parse ``auto`` / ``percentile[:LOW,HIGH]`` / ``minmax`` / ``none`` / ``range:LO,HI``.

    Raises:
        ValueError: naming the spec and the accepted forms.
    """
    if isinstance(spec, Scaling):
        return spec
    text = str(spec).strip().lower()
    method, _, arguments = text.partition(":")
    if method not in SCALING_METHODS:
        raise ValueError(f"scaling {spec!r} is not known: {_SCALING_HELP}")
    if method in ("auto", "minmax", "none"):
        if arguments:
            raise ValueError(f"scaling {spec!r}: {method} takes no values; {_SCALING_HELP}")
        return Scaling(method)
    if method == "percentile" and not arguments:
        return Scaling("percentile")
    if not re.fullmatch(r"\s*[-+0-9.eE]+\s*,\s*[-+0-9.eE]+\s*", arguments):
        raise ValueError(f"scaling {spec!r}: {method} needs two numbers LOW,HIGH; {_SCALING_HELP}")
    low, high = (float(value) for value in arguments.split(","))
    if not low < high:
        raise ValueError(f"scaling {spec!r}: LOW must be smaller than HIGH")
    if method == "percentile" and not (low >= 0 and high <= 100):
        raise ValueError(f"scaling {spec!r}: percentiles must lie in [0, 100]")
    return Scaling(method, low, high)


def parse_bands(spec: str | Sequence[int] | None, dataset: rasterio.io.DatasetReader) -> tuple[int, int, int]:
    """The three 1-based band indices that make the RGB input.

    Args:
        spec: ``"3,2,1"``, ``"1"``, a sequence of ints, or None for the default (see module doc).
        dataset: The open raster (its band count and colour interpretation).

    Raises:
        ValueError: a malformed spec, not 1 or 3 bands, or an index outside ``1..count`` (naming the count).
    """
    count = dataset.count
    if spec is None:
        colour = dataset.colorinterp
        usable = [index for index in range(1, count + 1) if colour[index - 1] != ColorInterp.alpha] or [1]
        chosen = usable[:3] if len(usable) >= 3 else usable[:1] * 3
        return chosen[0], chosen[1], chosen[2]
    if isinstance(spec, str):
        parts = [part.strip() for part in spec.split(",")]
        if not all(re.fullmatch(r"[0-9]+", part) for part in parts):
            raise ValueError(
                f"bands {spec!r}: expected 1-based band numbers separated by commas, e.g. '3,2,1'"
            )
        indices = [int(part) for part in parts]
    else:
        indices = [int(index) for index in spec]
    if len(indices) not in (1, 3):
        raise ValueError(
            f"bands {spec!r}: give one band (repeated to RGB) or three (R,G,B), not {len(indices)}"
        )
    for index in indices:
        if not 1 <= index <= count:
            raise ValueError(
                f"band {index} is out of range: {dataset.name} has {count} band(s), numbered 1..{count}"
            )
    if len(indices) == 1:
        indices = indices * 3
    return indices[0], indices[1], indices[2]


class RasterSource:
    """An open raster as RGB float32 windows in [0, 1] and valid masks.

    Args:
        dataset: An open rasterio dataset (read mode); the caller closes it.
        bands: See :func:`parse_bands`.
        scaling: See :func:`parse_scaling`.

    Raises:
        ValueError: a bad band / scaling spec, or no valid pixel to compute a stretch from.
    """

    def __init__(
        self,
        dataset: rasterio.io.DatasetReader,
        *,
        bands: str | Sequence[int] | None = None,
        scaling: str | Scaling = "auto",
    ) -> None:
        self.dataset = dataset
        self.bands = parse_bands(bands, dataset)
        self._unique = tuple(sorted(set(self.bands)))
        self._order = [self._unique.index(band) for band in self.bands]
        self.scaling = parse_scaling(scaling)
        self.low, self.high = self._band_limits()

    @property
    def height(self) -> int:
        return self.dataset.height

    @property
    def width(self) -> int:
        return self.dataset.width

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """Read one window.

        Returns:
            ``(rgb, valid)``: h×w×3 float32 in [0, 1] (0 where invalid) and h×w bool.
        """
        raw = self.dataset.read(self._unique, window=window)
        valid = self._valid(raw, self.dataset.read_masks(self._unique, window=window))
        rgb = raw[self._order].astype(np.float32)
        rgb -= self.low[:, None, None]
        rgb *= (1.0 / (self.high - self.low))[:, None, None]
        np.clip(rgb, 0.0, 1.0, out=rgb)
        rgb[:, ~valid] = 0.0
        return np.ascontiguousarray(rgb.transpose(1, 2, 0)), valid

    def _valid(self, raw: np.ndarray, masks: np.ndarray) -> np.ndarray:
        # GDAL's rule for a dataset mask: with a per-band nodata value, (0, 0, 50) is a dark blue
        # pixel, not a hole; a pixel is nodata only where every selected band is
        valid = np.any(masks > 0, axis=0)
        if np.issubdtype(raw.dtype, np.floating):
            valid &= np.all(np.isfinite(raw), axis=0)
        return valid

    def _band_limits(self) -> tuple[np.ndarray, np.ndarray]:
        """Per RGB channel (low, high) float32 arrays of shape (3,)."""
        method = self.scaling.method
        if method == "auto":
            if self.dataset.dtypes[self.bands[0] - 1] == "uint8" and all(
                self.dataset.dtypes[band - 1] == "uint8" for band in self.bands
            ):
                return np.zeros(3, np.float32), np.full(3, 255.0, np.float32)
            method = "percentile"
        if method == "none":
            return np.zeros(3, np.float32), np.ones(3, np.float32)
        if method == "range":
            return np.full(3, self.scaling.low, np.float32), np.full(3, self.scaling.high, np.float32)
        sample = self._decimated_sample()
        low, high = [], []
        for values in sample:
            if values.size == 0:
                raise ValueError(
                    f"{self.dataset.name}: bands {self.bands} have no valid pixel to compute a {method} "
                    "stretch from; pass a fixed scaling (range:LO,HI) or check its nodata"
                )
            if method == "percentile":
                lo, hi = np.percentile(values, [self.scaling.low, self.scaling.high])
            else:
                lo, hi = values.min(), values.max()
            # a constant band would divide by zero; map it to 0 instead
            low.append(float(lo))
            high.append(float(hi) if hi > lo else float(lo) + 1.0)
        low_u, high_u = np.asarray(low, np.float32), np.asarray(high, np.float32)
        return low_u[self._order], high_u[self._order]

    def _decimated_sample(self) -> list[np.ndarray]:
        """The valid values of each unique band from one read of at most :data:`STATISTICS_PIXELS` pixels."""
        height, width = self.dataset.height, self.dataset.width
        factor = min(1.0, math.sqrt(STATISTICS_PIXELS / (height * width)))
        shape = (len(self._unique), max(1, round(height * factor)), max(1, round(width * factor)))
        raw = self.dataset.read(self._unique, out_shape=shape, resampling=Resampling.nearest)
        masks = self.dataset.read_masks(self._unique, out_shape=shape, resampling=Resampling.nearest)
        valid = self._valid(raw, masks)
        return [band[valid].astype(np.float64) for band in raw]


@contextmanager
def open_raster(path: str | Path) -> Iterator[rasterio.io.DatasetReader]:
    """Open a raster for reading with a clear error; warn when it has no CRS.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: GDAL cannot read it (naming the file and GDAL's reason).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"raster {path} does not exist; pass an existing GeoTIFF or other GDAL raster"
        )
    try:
        with warnings.catch_warnings():
            # replaced below by one warning that says what it means for the outputs
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            dataset = rasterio.open(path)
    except RasterioIOError as error:
        raise ValueError(f"cannot read raster {path} with GDAL: {error}") from error
    with dataset:
        if dataset.crs is None:
            warnings.warn(
                f"{path} has no CRS: the output GeoTIFF and polygons carry none and are in pixel "
                "coordinates (or its transform's units if it has one); minimum area and simplification "
                "are in those units",
                UserWarning,
                stacklevel=3,
            )
        yield dataset
