"""Large georeferenced rasters: window-by-window reading, tiled blended inference, COG and polygon output.

The engine depends only on a tile function (:data:`TileFunction`: tiles H×W×3 float32 in [0, 1] →
H×W float32 probabilities), never on the model; the predictor's ``probabilities`` with a sentence
bound is one. See :mod:`rsrefseg.geo.pipeline` for what a sentence with global words ("the largest
…") means when it is applied tile by tile.
"""

from rsrefseg.geo.mosaic import TileFunction
from rsrefseg.geo.pipeline import RasterSummary, predict_raster
from rsrefseg.geo.reading import Scaling, parse_scaling
from rsrefseg.geo.tiles import TileGrid, make_grid

__all__ = [
    "RasterSummary",
    "Scaling",
    "TileFunction",
    "TileGrid",
    "make_grid",
    "parse_scaling",
    "predict_raster",
]
