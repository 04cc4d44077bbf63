"""The tile grid over a raster and the blend weights that make overlapping tiles seamless.

Tiles are ``tile_size`` pixels square and step by ``tile_size - overlap``; the last row and column
are snapped to the raster's edge (so they may overlap their neighbour more). A raster smaller than
a tile along an axis gets one tile there, padded by the caller.

Blending (``blend="cosine"``): a tile's weight is the outer product of two 1-D windows; each window
is 1 in the middle and rises as a raised cosine ``(1 - cos(pi (k + 1/2) / m)) / 2``, k = 0..m-1,
across each side it shares with a neighbour, m being the actual overlap on that side. Sides on the
raster's edge keep weight 1, and every ramp value is positive, so each pixel has weight. Where two
regularly spaced tiles overlap, their two ramps add up to 1 (a partition of unity), so the blend is
a pure cross-fade. The output at a pixel is ``sum_i w_i p_i / sum_i w_i``.

Seam bound: with normalised weights ``a_i = w_i / sum w``, the step between adjacent output pixels is

    |o(x+1) - o(x)| <= L + D * sum_i |a_i(x+1) - a_i(x)| / 2

where L is the largest step of one tile's own prediction and D the largest disagreement between
tiles at a pixel; for a cross-fade over m pixels the weight term is at most ``sin(pi / (2m))``, about
``pi / (2 * overlap)``. :func:`blend_step` computes it for a grid.

``blend="none"`` stitches hard instead: each pixel comes from one tile only, the overlap being cut
at its middle; a tile function that is not translation-equivariant then shows a step of up to D.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

BLEND_MODES = ("cosine", "none")


def axis_offsets(length: int, tile: int, overlap: int) -> tuple[int, ...]:
    """Start offsets of the tiles along one axis; the last one snapped to ``length - tile``."""
    if length <= tile:
        return (0,)
    stride = tile - overlap
    return (*range(0, length - tile, stride), length - tile)


def axis_weights(offsets: tuple[int, ...], extent: int, blend: str) -> list[np.ndarray]:
    """One 1-D weight window (length ``extent``, float32) per tile along an axis.

    Args:
        offsets: The tiles' start offsets (increasing).
        extent: The tiles' length along the axis (the tile size, or the raster's length if smaller).
        blend: ``cosine`` (ramps across each shared side) or ``none`` (1 on the tile's own part, else 0).
    """
    windows = []
    for index, start in enumerate(offsets):
        window = np.ones(extent, np.float64)
        before = offsets[index - 1] + extent - start if index > 0 else 0
        after = start + extent - offsets[index + 1] if index + 1 < len(offsets) else 0
        if blend == "cosine":
            if before > 0:
                window[:before] *= _ramp(before)
            if after > 0:
                window[extent - after :] *= _ramp(after)[::-1]
        else:
            # cut each overlap at its middle, the same cut seen from both tiles
            window[: before - before // 2] = 0.0
            window[extent - after // 2 :] = 0.0
        windows.append(window.astype(np.float32))
    return windows


def _ramp(width: int) -> np.ndarray:
    return 0.5 - 0.5 * np.cos(np.pi * (np.arange(width) + 0.5) / width)


@dataclass(frozen=True)
class TileGrid:
    """The tiles covering a ``height`` × ``width`` raster.

    Attributes:
        height: Raster rows.
        width: Raster columns.
        tile_size: Tile side in raster pixels.
        overlap: Nominal overlap between neighbouring tiles, in pixels.
        blend: ``cosine`` or ``none`` (see the module doc).
    """

    height: int
    width: int
    tile_size: int
    overlap: int
    blend: str = "cosine"

    @cached_property
    def row_offsets(self) -> tuple[int, ...]:
        return axis_offsets(self.height, self.tile_size, self.overlap)

    @cached_property
    def col_offsets(self) -> tuple[int, ...]:
        return axis_offsets(self.width, self.tile_size, self.overlap)

    @property
    def tile_height(self) -> int:
        """Rows a tile covers in the raster (the tile size, or the raster's height if smaller)."""
        return min(self.tile_size, self.height)

    @property
    def tile_width(self) -> int:
        return min(self.tile_size, self.width)

    @property
    def n_tiles(self) -> int:
        return len(self.row_offsets) * len(self.col_offsets)

    @cached_property
    def _row_weights(self) -> list[np.ndarray]:
        return axis_weights(self.row_offsets, self.tile_height, self.blend)

    @cached_property
    def _col_weights(self) -> list[np.ndarray]:
        return axis_weights(self.col_offsets, self.tile_width, self.blend)

    def weights(self, row: int, col: int) -> np.ndarray:
        """The blend weight of tile (row, col): tile_height × tile_width float32."""
        return np.outer(self._row_weights[row], self._col_weights[col])


def make_grid(
    height: int,
    width: int,
    *,
    input_size: int,
    tile_size: int | None = None,
    overlap: int | None = None,
    blend: str = "cosine",
) -> TileGrid:
    """Validate the tiling options and build the grid.

    Args:
        height: Raster rows.
        width: Raster columns.
        input_size: The model's square input side S; tiles are resized to it by the tile function.
        tile_size: Tile side in raster pixels; default S (the model sees the raster at its own resolution).
        overlap: Overlap in pixels; default ``tile_size // 4``; must be below ``tile_size / 2``.
        blend: ``cosine`` or ``none``.

    Raises:
        ValueError: a tile smaller than S (naming both), a negative or too large overlap, an unknown blend.
    """
    tile_size = input_size if tile_size is None else int(tile_size)
    if tile_size < input_size:
        raise ValueError(
            f"tile size {tile_size} px is smaller than the model's input size {input_size} px; "
            f"use a tile size of at least {input_size} (the default is the input size)"
        )
    overlap = tile_size // 4 if overlap is None else int(overlap)
    if overlap < 0 or 2 * overlap >= tile_size:
        raise ValueError(
            f"overlap {overlap} px must be >= 0 and smaller than half the tile size {tile_size} px "
            f"(at most {(tile_size - 1) // 2})"
        )
    if blend not in BLEND_MODES:
        raise ValueError(f"blend {blend!r} is not known; expected one of {', '.join(BLEND_MODES)}")
    return TileGrid(height=height, width=width, tile_size=tile_size, overlap=overlap, blend=blend)


def blend_step(grid: TileGrid) -> float:
    """The largest ``sum_i |a_i(x+1) - a_i(x)| / 2`` over adjacent pixels (the module doc's seam bound)."""
    shape = (grid.height, grid.width)
    total = np.zeros(shape, np.float64)
    planes = []
    for row, top in enumerate(grid.row_offsets):
        for col, left in enumerate(grid.col_offsets):
            plane = np.zeros(shape, np.float64)
            plane[top : top + grid.tile_height, left : left + grid.tile_width] = grid.weights(row, col)
            planes.append(plane)
            total += plane
    across_rows = np.zeros((grid.height - 1, grid.width))
    across_cols = np.zeros((grid.height, grid.width - 1))
    for plane in planes:
        share = plane / total
        across_rows += np.abs(np.diff(share, axis=0))
        across_cols += np.abs(np.diff(share, axis=1))
    return float(max(across_rows.max(initial=0.0), across_cols.max(initial=0.0)) / 2)
