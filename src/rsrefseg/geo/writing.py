"""The single-band output GeoTIFF, written strip by strip and finished as a Cloud Optimized GeoTIFF.

GDAL's COG driver can only copy a finished dataset (``CreateCopy``), never be written window by
window, so strips go to a hidden tiled GeoTIFF beside the output first; :meth:`GeoTiffStripWriter.commit`
copies it with the COG driver (deflate, 256-pixel blocks — GeoTIFF tiles must be multiples of 16 —
and overviews) to a second hidden file and renames that over the output, so the output is either
absent or complete.

Values and nodata:

``probability``
    float32 in [0, 1]; nodata NaN. NaN cannot be a valid probability, and QGIS and GDAL treat a NaN
    nodata as transparent; overviews average only valid pixels.
``mask``
    uint8, 1 = the referred object, 0 = background; nodata 255 (0 is a real answer, so it cannot
    be the sentinel). Overviews use nearest so they stay 0 / 1.

The output carries the source's CRS and transform; input nodata pixels are nodata in the output.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from types import TracebackType

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window

OUTPUT_KINDS = ("probability", "mask")
#: nodata of a mask output (0 and 1 are answers)
MASK_NODATA = 255
BLOCK_SIZE = 256


def check_output_path(path: str | Path, *, force: bool, what: str = "output") -> Path:
    """Refuse an existing output unless ``force``.

    Raises:
        FileExistsError: naming the path and the fix.
    """
    path = Path(path)
    if path.exists() and not force:
        raise FileExistsError(f"{what} {path} already exists; pass force=True (--force) to overwrite it")
    if path.is_dir():
        raise IsADirectoryError(f"{what} {path} is a folder; give a file path")
    return path


def _hidden_sibling(path: Path, suffix: str) -> Path:
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(handle)
    # GDAL creates the file itself
    Path(name).unlink()
    return Path(name)


class GeoTiffStripWriter:
    """Write probability strips to a single-band GeoTIFF, then finish it as a COG.

    Args:
        path: The final output path.
        width: Raster columns.
        height: Raster rows.
        crs: The source CRS (None for a raster without one).
        transform: The source transform.
        output: ``probability`` or ``mask``.
        threshold: Probability at or above which a pixel is 1 in a mask.

    Use as a context manager; without :meth:`commit` the temporary file is removed on exit.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        width: int,
        height: int,
        crs: CRS | None,
        transform: Affine,
        output: str = "probability",
        threshold: float = 0.5,
    ) -> None:
        if output not in OUTPUT_KINDS:
            raise ValueError(f"output {output!r} is not known; expected one of {', '.join(OUTPUT_KINDS)}")
        self.path = Path(path)
        self.output = output
        self.threshold = threshold
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._strips = _hidden_sibling(self.path, ".strips.tif")
        dtype, nodata = ("float32", float("nan")) if output == "probability" else ("uint8", MASK_NODATA)
        with warnings.catch_warnings():
            # a raster without CRS has already been warned about once (rsrefseg.geo.reading)
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            self._dataset = self._create(width, height, dtype, nodata, crs, transform)

    def _create(
        self, width: int, height: int, dtype: str, nodata: float, crs: CRS | None, transform: Affine
    ) -> rasterio.io.DatasetWriter:
        return rasterio.open(
            self._strips,
            "w",
            driver="GTiff",
            width=width,
            height=height,
            count=1,
            dtype=dtype,
            nodata=nodata,
            crs=crs,
            transform=transform,
            tiled=True,
            blockxsize=BLOCK_SIZE,
            blockysize=BLOCK_SIZE,
            compress="deflate",
            zlevel=1,
            bigtiff="if_safer",
            num_threads="all_cpus",
        )

    def write(self, top: int, probability: np.ndarray) -> None:
        """Write rows ``top .. top + h`` from an h×W float32 probability strip (NaN = nodata)."""
        if self.output == "mask":
            values = (probability >= self.threshold).view(np.uint8)
            values[np.isnan(probability)] = MASK_NODATA
        else:
            values = probability.astype(np.float32, copy=False)
        height, width = values.shape
        self._dataset.write(values, 1, window=Window(0, top, width, height))

    def commit(self) -> Path:
        """Copy the strips into a COG beside the output and rename it over the output."""
        self._dataset.close()
        final = _hidden_sibling(self.path, ".cog.tif")
        try:
            rasterio.shutil.copy(
                self._strips,
                final,
                driver="COG",
                compress="DEFLATE",
                predictor="YES",
                blocksize=BLOCK_SIZE,
                overview_resampling="AVERAGE" if self.output == "probability" else "NEAREST",
                bigtiff="IF_SAFER",
                num_threads="ALL_CPUS",
            )
            os.replace(final, self.path)
        except BaseException:
            final.unlink(missing_ok=True)
            raise
        finally:
            self._strips.unlink(missing_ok=True)
        return self.path

    def __enter__(self) -> GeoTiffStripWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if not self._dataset.closed:
            self._dataset.close()
        self._strips.unlink(missing_ok=True)
