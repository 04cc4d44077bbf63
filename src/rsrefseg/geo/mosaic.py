"""Streaming sliding-window inference: tiles in, blended probability strips out.

Tiles are processed tile-row by tile-row and sent to the tile function ``batch_size`` at a time.
Only one strip of accumulators is held — tile height × raster width for the weighted sum and the
weight — and the rows no later tile can touch are handed to the sinks as soon as a tile row is done.
Memory is therefore O(tile_size × width + batch_size × tile_size²), whatever the raster's height.

A tile whose pixels are all nodata is skipped (never sent to the tile function); nodata pixels of
other tiles are 0 in the tile and nodata (NaN) in the output.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from rasterio.windows import Window

from rsrefseg.geo.reading import RasterSource
from rsrefseg.geo.tiles import TileGrid

#: tiles H×W×3 float32 in [0, 1] → H×W float32 probabilities, one per tile
TileFunction = Callable[[list[np.ndarray]], list[np.ndarray]]
#: receives rows ``top .. top + h`` of the output as an h×W float32 probability strip (NaN = nodata)
StripSink = Callable[[int, np.ndarray], None]
#: called with (tiles done, tiles in all) after each batch and each skipped tile
Progress = Callable[[int, int], None]


@dataclass
class MosaicStats:
    """What one run did.

    Attributes:
        tiles: Tiles in the grid.
        tiles_skipped: Tiles entirely nodata (not predicted).
        model_seconds: Wall time spent inside the tile function.
    """

    tiles: int = 0
    tiles_skipped: int = 0
    model_seconds: float = 0.0


@dataclass
class _PendingTile:
    left: int
    col: int
    tile: np.ndarray


class _Strip:
    """Accumulators for the raster rows ``top .. top + rows`` (the current tile row)."""

    def __init__(self, rows: int, width: int) -> None:
        self.top = 0
        self.weighted = np.zeros((rows, width), np.float32)
        self.weight = np.zeros((rows, width), np.float32)
        self.valid = np.zeros((rows, width), bool)

    def emit(self, count: int) -> np.ndarray:
        """The first ``count`` rows as probabilities (NaN where invalid); shift them out."""
        probability = np.full((count, self.weighted.shape[1]), np.nan, np.float32)
        done = self.valid[:count] & (self.weight[:count] > 0)
        np.divide(self.weighted[:count], self.weight[:count], out=probability, where=done)
        rows = len(self.weighted)
        for array in (self.weighted, self.weight, self.valid):
            # chunks of ``count`` rows never overlap, so the shift needs no strip-sized temporary
            for start in range(0, rows - count, count):
                stop = min(start + count, rows - count)
                array[start:stop] = array[start + count : stop + count]
            array[rows - count :] = 0
        self.top += count
        return probability


def run_mosaic(
    source: RasterSource,
    grid: TileGrid,
    tile_function: TileFunction,
    sinks: Sequence[StripSink],
    *,
    batch_size: int = 8,
    progress: Progress | None = None,
) -> MosaicStats:
    """Predict every tile of ``grid`` over ``source``, blend, and stream finished rows to ``sinks``.

    Args:
        source: The raster as RGB windows in [0, 1].
        grid: The tile grid (its height and width must be the source's).
        tile_function: See :data:`TileFunction`; gets tiles of ``grid.tile_size`` squared
            (a raster smaller than a tile is zero-padded) and must return one map of that size each.
        sinks: Each receives every output row exactly once, top to bottom.
        batch_size: Tiles per tile-function call.
        progress: Optional callback, see :data:`Progress`.

    Raises:
        ValueError: the tile function returned the wrong number or shape of maps.
    """
    if batch_size < 1:
        raise ValueError(f"batch size {batch_size} must be at least 1")
    stats = MosaicStats(tiles=grid.n_tiles)
    strip = _Strip(grid.tile_height, grid.width)
    done = 0

    def flush(rows: int) -> None:
        top = strip.top
        probability = strip.emit(rows)
        for sink in sinks:
            sink(top, probability)

    def predict(row: int, pending: list[_PendingTile]) -> None:
        nonlocal done
        started = time.perf_counter()
        maps = tile_function([item.tile for item in pending])
        stats.model_seconds += time.perf_counter() - started
        if len(maps) != len(pending):
            raise ValueError(f"the tile function returned {len(maps)} maps for {len(pending)} tiles")
        for item, probability in zip(pending, maps, strict=True):
            probability = np.asarray(probability, np.float32)
            if probability.shape != item.tile.shape[:2]:
                raise ValueError(
                    f"the tile function returned a {probability.shape} map for a {item.tile.shape[:2]} tile; "
                    "it must return one H×W probability map per H×W×3 tile"
                )
            height, width = grid.tile_height, grid.tile_width
            weight = grid.weights(row, item.col)
            columns = slice(item.left, item.left + width)
            strip.weighted[:height, columns] += weight * probability[:height, :width]
            strip.weight[:height, columns] += weight
        done += len(pending)
        if progress is not None:
            progress(done, stats.tiles)

    for row, top in enumerate(grid.row_offsets):
        if top > strip.top:
            flush(top - strip.top)
        pending: list[_PendingTile] = []
        columns = list(enumerate(grid.col_offsets))
        # one read per batch_size neighbouring tiles: fewer GDAL calls, memory still bounded by the batch
        for first in range(0, len(columns), batch_size):
            group = columns[first : first + batch_size]
            start = group[0][1]
            window = Window(start, top, group[-1][1] + grid.tile_width - start, grid.tile_height)
            block_rgb, block_valid = source.read(window)
            for col, left in group:
                part = slice(left - start, left - start + grid.tile_width)
                valid = block_valid[:, part]
                if not valid.any():
                    stats.tiles_skipped += 1
                    done += 1
                    if progress is not None:
                        progress(done, stats.tiles)
                    continue
                strip.valid[:, left : left + grid.tile_width] |= valid
                pending.append(
                    _PendingTile(left=left, col=col, tile=_pad(block_rgb[:, part], grid.tile_size))
                )
                if len(pending) == batch_size:
                    predict(row, pending)
                    pending = []
        if pending:
            predict(row, pending)
    flush(grid.height - strip.top)
    return stats


def _pad(rgb: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad an h×w×3 tile to size×size×3 (only a raster smaller than a tile needs it)."""
    height, width = rgb.shape[:2]
    if height == size and width == size:
        return np.ascontiguousarray(rgb)
    padded = np.zeros((size, size, 3), np.float32)
    padded[:height, :width] = rgb
    return padded
