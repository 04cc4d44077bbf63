"""Polygons of the predicted mask, built strip by strip and written as GeoJSON or GeoPackage.

:class:`StripPolygonizer` is a strip sink (see :mod:`rsrefseg.geo.mosaic`): each strip's mask
(probability >= threshold) is traced with ``rasterio.features.shapes`` (4-connectivity) in pixel
coordinates; the pieces are numbered by rasterising them back onto the strip, which also gives each
piece's pixel count and probability sum. Pieces that share a pixel edge across a strip border are
joined with a union-find and unioned with shapely at the end, so an object crossing strips is one
polygon. Only the pieces' outlines are held in memory, never the mask.

:func:`write_polygons` moves them to the raster's CRS with its transform, drops those smaller than
``min_area`` (CRS units², or pixels without a CRS), optionally simplifies them (tolerance in the same
units, topology preserved), and writes them with pyogrio — GeoJSON for ``.geojson`` / ``.json``,
GeoPackage for ``.gpkg`` — atomically. Fields: ``id``, ``area`` (of the unsimplified polygon),
``pixels``, ``mean_probability``.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyogrio.raw
import rasterio.features
import shapely
import shapely.affinity
from affine import Affine
from rasterio.crs import CRS
from shapely.geometry import shape

from rsrefseg.geo.writing import _hidden_sibling, check_output_path

VECTOR_DRIVERS = {".geojson": "GeoJSON", ".json": "GeoJSON", ".gpkg": "GPKG"}


def vector_driver(path: str | Path) -> str:
    """The OGR driver for a polygons path, by extension.

    Raises:
        ValueError: an extension other than .geojson, .json or .gpkg.
    """
    suffix = Path(path).suffix.lower()
    if suffix not in VECTOR_DRIVERS:
        raise ValueError(
            f"polygons {path}: unknown extension {suffix!r}; use .geojson (GeoJSON) or .gpkg (GeoPackage)"
        )
    return VECTOR_DRIVERS[suffix]


@dataclass
class PolygonPieces:
    """Polygons in pixel coordinates (x = column, y = row) with their statistics.

    Attributes:
        geometries: One shapely Polygon per object.
        pixels: Pixel count per object.
        probability_sums: Sum of the probabilities over each object's pixels.
    """

    geometries: list[shapely.Polygon]
    pixels: np.ndarray
    probability_sums: np.ndarray


class _UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []

    def add(self) -> int:
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def find(self, item: int) -> int:
        while self.parent[item] != item:
            self.parent[item] = self.parent[self.parent[item]]
            item = self.parent[item]
        return item

    def union(self, first: int, second: int) -> None:
        self.parent[self.find(first)] = self.find(second)


class StripPolygonizer:
    """A strip sink that traces the mask ``probability >= threshold`` into polygons.

    Args:
        width: Raster columns.
        threshold: Probability at or above which a pixel belongs to an object.
    """

    def __init__(self, *, width: int, threshold: float) -> None:
        self.threshold = threshold
        self._pieces: list[shapely.Polygon] = []
        self._pixels: list[int] = []
        self._sums: list[float] = []
        self._groups = _UnionFind()
        # piece id (-1 = background) of each pixel in the previous strip's last row
        self._last_row = np.full(width, -1, np.int64)

    def __call__(self, top: int, probability: np.ndarray) -> None:
        """Trace rows ``top .. top + h`` (h×W float32, NaN = nodata)."""
        mask = np.nan_to_num(probability, nan=-1.0) >= self.threshold
        if not mask.any():
            self._last_row = np.full(mask.shape[1], -1, np.int64)
            return
        offset = Affine.translation(0, top)
        first = len(self._pieces)
        shapes = [
            shape(geometry)
            for geometry, _ in rasterio.features.shapes(
                mask.view(np.uint8), mask=mask, connectivity=4, transform=offset
            )
        ]
        # pixel-aligned outlines rasterise back exactly (pixel centres are never on an edge)
        labels = rasterio.features.rasterize(
            ((geometry, number) for number, geometry in enumerate(shapes, start=1)),
            out_shape=mask.shape,
            transform=offset,
            dtype="int32",
        )
        counts = np.zeros(len(shapes) + 1, np.int64)
        sums = np.zeros(len(shapes) + 1, np.float64)
        # row blocks keep bincount's float64 weights small whatever the strip's size
        for start in range(0, len(labels), 64):
            block = labels[start : start + 64].ravel()
            weights = np.where(mask[start : start + 64], probability[start : start + 64], 0).ravel()
            counts += np.bincount(block, minlength=len(shapes) + 1)
            sums += np.bincount(block, weights=weights, minlength=len(shapes) + 1)
        for number, geometry in enumerate(shapes, start=1):
            self._pieces.append(geometry)
            self._pixels.append(int(counts[number]))
            self._sums.append(float(sums[number]))
            self._groups.add()
        first_row = np.where(labels[0] > 0, labels[0].astype(np.int64) + first - 1, -1)
        touching = (self._last_row >= 0) & (first_row >= 0)
        for above, below in set(
            zip(self._last_row[touching].tolist(), first_row[touching].tolist(), strict=True)
        ):
            self._groups.union(above, below)
        self._last_row = np.where(labels[-1] > 0, labels[-1].astype(np.int64) + first - 1, -1)

    def finish(self) -> PolygonPieces:
        """Join the pieces of each object; one polygon per 4-connected object."""
        groups: dict[int, list[int]] = {}
        for index in range(len(self._pieces)):
            groups.setdefault(self._groups.find(index), []).append(index)
        geometries, pixels, sums = [], [], []
        for members in groups.values():
            merged = (
                self._pieces[members[0]]
                if len(members) == 1
                else shapely.union_all([self._pieces[index] for index in members])
            )
            geometries.append(merged)
            pixels.append(sum(self._pixels[index] for index in members))
            sums.append(sum(self._sums[index] for index in members))
        return PolygonPieces(geometries, np.asarray(pixels, np.int64), np.asarray(sums, np.float64))


def write_polygons(
    path: str | Path,
    pieces: PolygonPieces,
    *,
    transform: Affine,
    crs: CRS | None,
    min_area: float = 0.0,
    simplify: float = 0.0,
    force: bool = False,
) -> int:
    """Write the polygons in the raster's CRS; return how many were written.

    Args:
        path: ``.geojson`` / ``.json`` (GeoJSON) or ``.gpkg`` (GeoPackage).
        pieces: From :meth:`StripPolygonizer.finish`.
        transform: The raster's transform (pixel → CRS coordinates).
        crs: The raster's CRS; None writes no CRS (pixel coordinates).
        min_area: Polygons with a smaller area (CRS units², or pixels without a CRS) are dropped.
        simplify: Douglas-Peucker tolerance in CRS units (0 = none), topology preserved.
        force: Overwrite an existing file.

    Raises:
        FileExistsError: the file exists and ``force`` is false.
        ValueError: an unknown extension, a negative min_area or simplify.
    """
    path = check_output_path(path, force=force, what="polygons")
    driver = vector_driver(path)
    if min_area < 0 or simplify < 0:
        raise ValueError(f"min_area ({min_area}) and simplify ({simplify}) must be >= 0")
    matrix = [transform.a, transform.b, transform.d, transform.e, transform.xoff, transform.yoff]
    geometries = np.asarray(
        [shapely.affinity.affine_transform(geometry, matrix) for geometry in pieces.geometries], dtype=object
    )
    areas = shapely.area(geometries) if len(geometries) else np.zeros(0)
    keep = areas >= min_area
    geometries, areas = geometries[keep], areas[keep]
    pixels, sums = pieces.pixels[keep], pieces.probability_sums[keep]
    if simplify > 0 and len(geometries):
        geometries = shapely.simplify(geometries, simplify, preserve_topology=True)
    # rings counter-clockwise outside, as GeoJSON (RFC 7946) asks; a y-down transform reverses them
    geometries = shapely.orient_polygons(geometries) if len(geometries) else geometries
    kinds = set(shapely.get_type_id(geometries).tolist())
    geometry_type = "Polygon" if kinds <= {3} else "MultiPolygon"
    fields = {
        "id": np.arange(1, len(geometries) + 1, dtype=np.int64),
        "area": areas.astype(np.float64),
        "pixels": pixels.astype(np.int64),
        "mean_probability": sums / np.maximum(pixels, 1),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = _hidden_sibling(path, path.suffix)
    try:
        with warnings.catch_warnings():
            # a raster without CRS has already been warned about once (rsrefseg.geo.reading)
            warnings.filterwarnings("ignore", message="'crs' was not provided", category=UserWarning)
            pyogrio.raw.write(
                partial,
                geometry=shapely.to_wkb(geometries) if len(geometries) else np.zeros(0, dtype=object),
                field_data=list(fields.values()),
                fields=list(fields),
                layer=path.stem,
                driver=driver,
                geometry_type=geometry_type,
                crs=crs.to_wkt() if crs is not None else None,
                promote_to_multi=geometry_type == "MultiPolygon",
            )
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return len(geometries)
