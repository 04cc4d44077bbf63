"""``predict_raster``: one sentence over a whole georeferenced raster → a COG and, optionally, polygons.

What a sentence means on a tiled raster: the sentence is applied to every tile on its own, and each
tile answers it about itself. Words that compare objects across the scene ("the largest tank",
"the leftmost building", "the ship nearest the bridge") are therefore answered per tile: every tile
may mark its own largest tank, and an object that is "leftmost" in the whole raster is found only
if it is also the answer within its tile. Sentences that describe the object itself ("storage tanks
north of the river", "the red-roofed building") are unaffected. For a scene-wide superlative, pick
among the polygons afterwards (their ``area`` field), or predict on a downsampled raster.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import rasterio

from rsrefseg.geo.mosaic import Progress, StripSink, TileFunction, run_mosaic
from rsrefseg.geo.reading import RasterSource, Scaling, open_raster
from rsrefseg.geo.tiles import make_grid
from rsrefseg.geo.vectors import StripPolygonizer, vector_driver, write_polygons
from rsrefseg.geo.writing import OUTPUT_KINDS, GeoTiffStripWriter, check_output_path

#: GDAL's block cache during a run (MB): it holds source blocks and the output's open block row
DEFAULT_CACHE_MB = 64


@dataclass(frozen=True)
class RasterSummary:
    """What :func:`predict_raster` did.

    Attributes:
        raster: The output GeoTIFF.
        polygons: The polygons file, or None.
        polygons_written: Polygons written (after the minimum-area filter), or None.
        height: Raster rows.
        width: Raster columns.
        tiles: Tiles in the grid.
        tiles_skipped: Tiles entirely nodata, not predicted.
        seconds: Wall time of the whole run (reading, model, blending, writing, polygons).
        model_seconds: Wall time inside the tile function.
    """

    raster: Path
    polygons: Path | None
    polygons_written: int | None
    height: int
    width: int
    tiles: int
    tiles_skipped: int
    seconds: float
    model_seconds: float

    @property
    def pixels(self) -> int:
        return self.height * self.width

    @property
    def megapixels_per_second(self) -> float:
        return self.pixels / 1e6 / max(self.seconds, 1e-9)


def predict_raster(
    source: str | Path,
    tile_function: TileFunction,
    out_path: str | Path,
    *,
    input_size: int,
    tile_size: int | None = None,
    overlap: int | None = None,
    bands: str | Sequence[int] | None = None,
    scaling: str | Scaling = "auto",
    output: str = "probability",
    threshold: float = 0.5,
    batch_size: int = 8,
    blend: str = "cosine",
    force: bool = False,
    polygons_path: str | Path | None = None,
    min_area: float = 0.0,
    simplify: float = 0.0,
    progress: Progress | None = None,
    cache_mb: int = DEFAULT_CACHE_MB,
) -> RasterSummary:
    """Run a tile function over a raster window by window and write a single-band COG (and polygons).

    Args:
        source: Any GDAL raster (GeoTIFF, VRT, JPEG2000, ...).
        tile_function: tiles H×W×3 float32 in [0, 1] → H×W float32 probabilities (e.g.
            ``functools.partial(predictor.probabilities, sentence=...)``).
        out_path: The output GeoTIFF (COG layout).
        input_size: The model's input side S.
        tile_size: Tile side in raster pixels (default S, i.e. the raster's own resolution); >= S.
        overlap: Tile overlap in pixels (default tile_size // 4); < tile_size / 2.
        bands: 1-based RGB bands, e.g. ``"3,2,1"``; one band is repeated. See :mod:`rsrefseg.geo.reading`.
        scaling: ``auto`` / ``percentile[:LOW,HIGH]`` / ``minmax`` / ``none`` / ``range:LO,HI``.
        output: ``probability`` (float32, nodata NaN) or ``mask`` (uint8 0/1, nodata 255).
        threshold: Probability at or above which a pixel is in the mask and the polygons.
        batch_size: Tiles per tile-function call.
        blend: ``cosine`` (seamless) or ``none`` (hard stitching, for comparison).
        force: Overwrite existing outputs.
        polygons_path: Also write polygons (``.geojson`` or ``.gpkg``).
        min_area: Drop polygons smaller than this (CRS units², or pixels without a CRS).
        simplify: Simplification tolerance in CRS units (0 = none).
        progress: Called with (tiles done, tiles in all).
        cache_mb: GDAL's block cache in MB; bounds the memory GDAL uses while reading and writing.

    Raises:
        FileExistsError: an output exists and ``force`` is false.
        FileNotFoundError: ``source`` does not exist.
        ValueError: a bad option (naming it) or a raster GDAL cannot read.
    """
    started = time.perf_counter()
    out_path = check_output_path(out_path, force=force)
    if polygons_path is not None:
        polygons_path = check_output_path(polygons_path, force=force, what="polygons")
        vector_driver(polygons_path)
    if output not in OUTPUT_KINDS:
        raise ValueError(f"output {output!r} is not known; expected one of {', '.join(OUTPUT_KINDS)}")
    if min_area < 0 or simplify < 0:
        raise ValueError(f"min_area ({min_area}) and simplify ({simplify}) must be >= 0")
    with rasterio.Env(GDAL_CACHEMAX=int(cache_mb)), open_raster(source) as dataset:
        grid = make_grid(
            dataset.height,
            dataset.width,
            input_size=input_size,
            tile_size=tile_size,
            overlap=overlap,
            blend=blend,
        )
        reader = RasterSource(dataset, bands=bands, scaling=scaling)
        with GeoTiffStripWriter(
            out_path,
            width=dataset.width,
            height=dataset.height,
            crs=dataset.crs,
            transform=dataset.transform,
            output=output,
            threshold=threshold,
        ) as writer:
            sinks: list[StripSink] = [writer.write]
            polygonizer = None
            if polygons_path is not None:
                polygonizer = StripPolygonizer(width=dataset.width, threshold=threshold)
                sinks.append(polygonizer)
            stats = run_mosaic(reader, grid, tile_function, sinks, batch_size=batch_size, progress=progress)
            writer.commit()
        written = None
        if polygonizer is not None and polygons_path is not None:
            written = write_polygons(
                polygons_path,
                polygonizer.finish(),
                transform=dataset.transform,
                crs=dataset.crs,
                min_area=min_area,
                simplify=simplify,
                force=force,
            )
        return RasterSummary(
            raster=out_path,
            polygons=polygons_path,
            polygons_written=written,
            height=dataset.height,
            width=dataset.width,
            tiles=stats.tiles,
            tiles_skipped=stats.tiles_skipped,
            seconds=time.perf_counter() - started,
            model_seconds=stats.model_seconds,
        )
