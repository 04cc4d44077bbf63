"""Megapixels per second of the tiled GeoTIFF path, on a synthetic georeferenced raster.

    python -m rsrefseg.geo.benchmark --checkpoint best.ckpt --size 2048 --device cpu
    python -m rsrefseg.geo.benchmark --size 4096          # no model: the engine's own cost

The figure covers the whole run: reading, scaling, the tile function, blending, writing the COG.
"""

from __future__ import annotations

import argparse
import functools
import tempfile
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

from rsrefseg.geo.mosaic import TileFunction
from rsrefseg.geo.pipeline import RasterSummary, predict_raster


def write_synthetic_raster(path: str | Path, size: int, *, block: int = 512) -> Path:
    """A size×size RGB uint8 GeoTIFF (UTM 33N, 0.5 m pixels) of smooth blobs, written strip by strip."""
    path = Path(path)
    profile = dict(
        driver="GTiff", width=size, height=size, count=3, dtype="uint8", crs="EPSG:32633",
        transform=from_origin(500_000.0, 4_000_000.0, 0.5, 0.5), tiled=True, blockxsize=256, blockysize=256,
        compress="deflate",
    )  # fmt: skip
    cols = np.arange(size, dtype=np.float32)
    with rasterio.open(path, "w", **profile) as dataset:
        for top in range(0, size, block):
            rows = np.arange(top, min(top + block, size), dtype=np.float32)[:, None]
            red = 127 + 120 * np.sin(cols / 37) * np.cos(rows / 53)
            green = 127 + 120 * np.cos(cols / 71 + rows / 29)
            blue = np.broadcast_to(255 * cols / size, red.shape)
            dataset.write(
                np.stack([red, green, blue]).astype(np.uint8), window=((top, top + len(rows)), (0, size))
            )
    return path


def mean_of_channels(tiles: list[np.ndarray]) -> list[np.ndarray]:
    """A model-free tile function: measures the engine alone."""
    return [tile.mean(axis=2) for tile in tiles]


def benchmark_raster(
    tile_function: TileFunction,
    *,
    input_size: int,
    size: int = 2048,
    tile_size: int | None = None,
    overlap: int | None = None,
    batch_size: int = 16,
    output: str = "probability",
) -> RasterSummary:
    """Run :func:`predict_raster` once on a fresh size×size synthetic raster; the summary has the speed."""
    with tempfile.TemporaryDirectory(prefix="rsrefseg-geo-bench-") as folder:
        source = write_synthetic_raster(Path(folder) / "scene.tif", size)
        return predict_raster(
            source,
            tile_function,
            Path(folder) / "out.tif",
            input_size=input_size,
            tile_size=tile_size,
            overlap=overlap,
            batch_size=batch_size,
            output=output,
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m rsrefseg.geo.benchmark", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--checkpoint", type=Path, help="a rsrefseg checkpoint; without it, a model-free tile function"
    )
    parser.add_argument("--sentence", default="the large building in the middle")
    parser.add_argument("--size", type=int, default=2048, help="raster side in pixels")
    parser.add_argument("--tile-size", type=int, help="tile side in pixels (default: the model's input size)")
    parser.add_argument("--overlap", type=int, help="tile overlap in pixels (default: tile size // 4)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    args = parser.parse_args(argv)
    if args.checkpoint is None:
        tile_function: TileFunction = mean_of_channels
        input_size, what = 64, "no model (engine only)"
    else:
        from rsrefseg.predict import Predictor

        predictor = Predictor.from_checkpoint(args.checkpoint, device=args.device, precision=args.precision)
        tile_function = functools.partial(predictor.probabilities, sentence=args.sentence)
        input_size, what = predictor.input_size, f"{args.checkpoint.name} on {args.device} ({args.precision})"
    summary = benchmark_raster(
        tile_function,
        input_size=input_size,
        size=args.size,
        tile_size=args.tile_size,
        overlap=args.overlap,
        batch_size=args.batch_size,
    )
    print(
        f"{what}: {summary.width}x{summary.height} px, {summary.tiles} tiles of "
        f"{args.tile_size or input_size} px, batch {args.batch_size}: {summary.seconds:.2f} s "
        f"({summary.model_seconds:.2f} s in the model) = {summary.megapixels_per_second:.3f} megapixels/s"
    )


if __name__ == "__main__":
    main()
