"""The raster engine (rsrefseg.geo): tiling, blending, windowed reading, COG output, polygons, bad input."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pyogrio
import pyogrio.raw
import pytest
import rasterio
import rasterio.features
import shapely
from rasterio.crs import CRS
from rasterio.transform import from_origin

from rsrefseg.geo import make_grid, parse_scaling, predict_raster
from rsrefseg.geo.reading import RasterSource
from rsrefseg.geo.tiles import axis_weights, blend_step

CRS_UTM = CRS.from_epsg(32633)
TRANSFORM = from_origin(500_000.0, 4_000_000.0, 0.5, 0.5)
S = 64  # the tiny model's input side


def write_raster(path: Path, bands: np.ndarray, **profile) -> Path:
    """Write a C×H×W array as a tiled GeoTIFF (UTM 33N, 0.5 m pixels unless overridden)."""
    options = dict(
        driver="GTiff",
        count=bands.shape[0],
        height=bands.shape[1],
        width=bands.shape[2],
        dtype=bands.dtype,
        crs=CRS_UTM,
        transform=TRANSFORM,
        tiled=True,
        blockxsize=128,
        blockysize=128,
    )
    options.update(profile)
    with rasterio.open(path, "w", **options) as dataset:
        dataset.write(bands)
    return path


def smooth_rgb(height: int, width: int) -> np.ndarray:
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    red = 128 + 100 * np.sin(cols / 23.0) * np.cos(rows / 31.0)
    green = 255 * cols / width
    blue = 255 * rows / height
    return np.stack([red, green, blue]).round().astype(np.uint8)


def red_channel(tiles: list[np.ndarray]) -> list[np.ndarray]:
    """Pointwise, hence translation-equivariant: tiling must not change it at all."""
    return [tile[..., 0].copy() for tile in tiles]


def position_dependent(tiles: list[np.ndarray]) -> list[np.ndarray]:
    """Not translation-equivariant: the answer depends on where the pixel sits in its tile."""
    maps = []
    for tile in tiles:
        size = tile.shape[0]
        ramp = np.add.outer(np.arange(size), np.arange(size)) / (2.0 * size)
        maps.append((0.5 * tile[..., 0] + 0.5 * ramp).astype(np.float32))
    return maps


def read_band(path: Path) -> np.ndarray:
    with rasterio.open(path) as dataset:
        return dataset.read(1)


# --- tiling and blending ---------------------------------------------------------------------------


def test_grid_snaps_the_last_tiles_to_the_edges_and_weights_cross_fade():
    grid = make_grid(300, 200, input_size=S)
    assert grid.tile_size == S and grid.overlap == S // 4
    assert grid.row_offsets == (0, 48, 96, 144, 192, 236)
    assert grid.col_offsets == (0, 48, 96, 136)
    weights = axis_weights((0, 48, 96), 64, "cosine")
    # regularly spaced neighbours' ramps add up to one across their overlap; raster edges keep weight 1
    np.testing.assert_allclose(weights[0][48:] + weights[1][:16], 1.0, atol=1e-6)
    assert weights[0][0] == 1.0 and weights[2][-1] == 1.0
    assert min(window.min() for window in weights) > 0
    # the blend term of the seam bound: about pi / (2 * overlap)
    assert blend_step(grid) <= np.sin(np.pi / (2 * 16)) + 1e-6
    assert blend_step(make_grid(300, 200, input_size=S, blend="none")) == pytest.approx(1.0)


def own_predictions(image: np.ndarray, grid, tile_function) -> list[tuple[int, int, np.ndarray]]:
    rgb = image.transpose(1, 2, 0).astype(np.float32) / 255
    out = []
    for top in grid.row_offsets:
        for left in grid.col_offsets:
            tile = rgb[top : top + grid.tile_size, left : left + grid.tile_size]
            out.append((top, left, tile_function([tile])[0]))
    return out


def check_tiles_and_seams(image: np.ndarray, grid, tile_function, tiled: np.ndarray, *, atol: float) -> float:
    """Assert the output is each tile's own prediction where one tile covers it, and the seam bound holds.

    Returns:
        The bound on the step between adjacent output pixels (rsrefseg.geo.tiles): L + D * blend_step.
    """
    height, width = tiled.shape
    size = grid.tile_size
    tiles = own_predictions(image, grid, tile_function)
    coverage = np.zeros((height, width), int)
    low, high = np.full((height, width), np.inf), np.full((height, width), -np.inf)
    own_step = 0.0
    for top, left, prediction in tiles:
        area = np.s_[top : top + size, left : left + size]
        coverage[area] += 1
        low[area], high[area] = np.minimum(low[area], prediction), np.maximum(high[area], prediction)
        own_step = max(
            own_step, np.abs(np.diff(prediction, axis=0)).max(), np.abs(np.diff(prediction, axis=1)).max()
        )
    # away from overlaps the output is the covering tile's own prediction
    for top, left, prediction in tiles:
        inside = coverage[top : top + size, left : left + size] == 1
        np.testing.assert_allclose(
            tiled[top : top + size, left : left + size][inside], prediction[inside], atol=atol
        )
    bound = own_step + float((high - low).max()) * blend_step(grid)
    assert steepest(tiled) <= bound + atol
    return bound


def steepest(values: np.ndarray) -> float:
    return float(max(np.abs(np.diff(values, axis=0)).max(), np.abs(np.diff(values, axis=1)).max()))


def test_tiled_output_equals_each_tiles_own_prediction_inside_and_is_seamless(tmp_path):
    image = smooth_rgb(200, 260)
    source = write_raster(tmp_path / "in.tif", image)
    predict_raster(source, position_dependent, tmp_path / "blend.tif", input_size=S)
    predict_raster(source, position_dependent, tmp_path / "hard.tif", input_size=S, blend="none")
    grid = make_grid(200, 260, input_size=S)
    bound = check_tiles_and_seams(
        image, grid, position_dependent, read_band(tmp_path / "blend.tif"), atol=1e-5
    )
    # stitched without blending, the tiles' disagreement shows as a step far above the bound
    assert steepest(read_band(tmp_path / "hard.tif")) > 2 * bound


def test_the_real_tiny_model_tiles_seamlessly(tmp_path, tiny_checkpoint):
    from rsrefseg.predict import Predictor

    predictor = Predictor.from_checkpoint(tiny_checkpoint)
    size = predictor.input_size
    tile_function = functools.partial(predictor.probabilities, sentence="the large building in the middle")
    image = smooth_rgb(size + size // 2, size + size // 2 + 10)
    source = write_raster(tmp_path / "in.tif", image)
    summary = predict_raster(source, tile_function, tmp_path / "p.tif", input_size=size, batch_size=4)
    assert summary.tiles == 4
    grid = make_grid(*image.shape[1:], input_size=size)
    check_tiles_and_seams(image, grid, tile_function, read_band(tmp_path / "p.tif"), atol=1e-5)
    # a raster of exactly one tile gives the untiled prediction of the image
    one = write_raster(tmp_path / "one.tif", image[:, :size, :size].copy())
    predict_raster(one, tile_function, tmp_path / "one_p.tif", input_size=size)
    untiled = predictor.predict(image[:, :size, :size].transpose(1, 2, 0), "the large building in the middle")
    np.testing.assert_allclose(read_band(tmp_path / "one_p.tif"), untiled.probability, atol=1e-5)


def test_a_translation_equivariant_tile_function_gives_the_untiled_result(tmp_path):
    image = smooth_rgb(150, 170)
    source = write_raster(tmp_path / "in.tif", image)
    predict_raster(source, red_channel, tmp_path / "out.tif", input_size=S, batch_size=3)
    np.testing.assert_allclose(read_band(tmp_path / "out.tif"), image[0] / 255, atol=1e-6)


def test_a_raster_smaller_than_a_tile_is_padded_to_the_tile_size(tmp_path):
    image = smooth_rgb(40, 90)
    source = write_raster(tmp_path / "in.tif", image, tiled=False)
    sizes = []

    def record(tiles):
        sizes.extend(tile.shape for tile in tiles)
        return red_channel(tiles)

    predict_raster(source, record, tmp_path / "out.tif", input_size=S)
    assert set(sizes) == {(S, S, 3)}
    np.testing.assert_allclose(read_band(tmp_path / "out.tif"), image[0] / 255, atol=1e-6)


# --- windowed reading: memory stays bounded --------------------------------------------------------

MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from rsrefseg.geo import predict_raster

    def status_mb(key):
        # VmHWM is this process's own peak; getrusage's ru_maxrss would carry the parent's over fork + exec
        line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(key))
        return int(line.split()[1]) / 1024

    def mean_rgb(tiles):
        return [tile.mean(axis=2) for tile in tiles]

    before = status_mb("VmRSS:")
    Path("/proc/self/clear_refs").write_text("5")  # restart the peak from here (Linux >= 4.0)
    summary = predict_raster(sys.argv[1], mean_rgb, sys.argv[2], input_size=64, tile_size=256, overlap=32,
                             batch_size=8, output="mask", polygons_path=sys.argv[3])
    print(json.dumps({"growth_mb": status_mb("VmHWM:") - before, "before_mb": before,
                      "seconds": summary.seconds}))
    """
)


def test_a_raster_larger_than_the_memory_budget_is_read_in_windows(tmp_path):
    """8000×8000×3 uint8 is 192 MB decoded (768 MB as float); the run may grow by at most 150 MB."""
    budget_mb, side = 150, 8000
    path = tmp_path / "big.tif"
    profile = dict(
        driver="GTiff", width=side, height=side, count=3, dtype="uint8", crs=CRS_UTM, transform=TRANSFORM,
        tiled=True, blockxsize=512, blockysize=512, compress="deflate", zlevel=1,
    )  # fmt: skip
    cols = np.arange(side, dtype=np.float32)
    with rasterio.open(path, "w", **profile) as dataset:
        for top in range(0, side, 512):
            rows = np.arange(top, min(top + 512, side), dtype=np.float32)[:, None]
            band = (127 + 120 * np.sin(cols / 300) * np.cos(rows / 400)).astype(np.uint8)
            dataset.write(np.broadcast_to(band, (3, *band.shape)), window=((top, top + len(rows)), (0, side)))
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            MEMORY_SCRIPT,
            str(path),
            str(tmp_path / "out.tif"),
            str(tmp_path / "out.gpkg"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    print(report)
    assert report["growth_mb"] < budget_mb, report
    with rasterio.open(tmp_path / "out.tif") as dataset:
        assert (dataset.width, dataset.height) == (side, side)
        assert dataset.read(1, window=((4000, 4010), (0, 10))).max() <= 1


# --- output GeoTIFF ----------------------------------------------------------------------------------


def test_output_carries_crs_transform_and_nodata_in_cog_layout(tmp_path):
    image = smooth_rgb(300, 330)
    image[:, :140, :150] = 0  # nodata covering whole tiles (skipped) and parts of others
    source = write_raster(tmp_path / "in.tif", image, nodata=0)
    calls = []

    def counting(tiles):
        calls.extend(tile.shape for tile in tiles)
        assert all(tile.any() for tile in tiles)
        return red_channel(tiles)

    summary = predict_raster(source, counting, tmp_path / "p.tif", input_size=S)
    mask_summary = predict_raster(
        source, red_channel, tmp_path / "m.tif", input_size=S, output="mask", threshold=0.5
    )
    assert summary.tiles_skipped == 4 and len(calls) == summary.tiles - 4
    assert mask_summary.megapixels_per_second > 0
    nodata = (image == 0).all(axis=0)
    for name, dtype in (("p.tif", "float32"), ("m.tif", "uint8")):
        with rasterio.open(tmp_path / name) as dataset:
            assert dataset.crs == CRS_UTM and dataset.transform == TRANSFORM
            assert dataset.count == 1 and dataset.dtypes[0] == dtype
            assert dataset.profile["tiled"] and dataset.profile["compress"] == "deflate"
            assert dataset.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
            assert dataset.block_shapes[0] == (256, 256)
            values = dataset.read(1)
            if dtype == "float32":
                assert np.isnan(dataset.nodata)
                np.testing.assert_array_equal(np.isnan(values), nodata)
            else:
                assert dataset.nodata == 255
                np.testing.assert_array_equal(values == 255, nodata)
                np.testing.assert_array_equal(
                    values[~nodata], (image[0][~nodata] / 255 >= 0.5).astype(np.uint8)
                )


def test_existing_output_is_refused_unless_forced(tmp_path):
    source = write_raster(tmp_path / "in.tif", smooth_rgb(70, 70))
    out = tmp_path / "out.tif"
    out.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="force"):
        predict_raster(source, red_channel, out, input_size=S)
    assert out.read_bytes() == b"keep me"
    polygons = tmp_path / "p.geojson"
    polygons.write_text("{}")
    with pytest.raises(FileExistsError, match="polygons"):
        predict_raster(source, red_channel, tmp_path / "new.tif", input_size=S, polygons_path=polygons)
    assert not (tmp_path / "new.tif").exists()
    predict_raster(source, red_channel, out, input_size=S, force=True)
    assert read_band(out).shape == (70, 70)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["in.tif", "out.tif", "p.geojson"]


def test_a_failing_tile_function_leaves_no_output_and_no_temporary_file(tmp_path):
    source = write_raster(tmp_path / "in.tif", smooth_rgb(70, 70))

    def wrong_shape(tiles):
        return [np.zeros((8, 8), np.float32) for _ in tiles]

    with pytest.raises(ValueError, match=r"returned a \(8, 8\) map"):
        predict_raster(source, wrong_shape, tmp_path / "out.tif", input_size=S)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["in.tif"]


# --- polygons ------------------------------------------------------------------------------------------


def discs(height: int, width: int, centres_radii) -> np.ndarray:
    rows, cols = np.mgrid[0:height, 0:width]
    inside = np.zeros((height, width), bool)
    for row, col, radius in centres_radii:
        inside |= (rows - row) ** 2 + (cols - col) ** 2 <= radius**2
    return inside


@pytest.mark.parametrize("suffix", [".geojson", ".gpkg"])
def test_polygons_rasterise_back_to_the_mask(tmp_path, suffix):
    # a big ring-shaped object crossing many output strips, a small one, and medium ones
    objects = discs(260, 300, [(130, 120, 100), (30, 270, 3), (220, 260, 25), (40, 250, 12)])
    objects &= ~discs(260, 300, [(130, 120, 40)])
    image = np.stack([objects * 255] * 3).astype(np.uint8)
    source = write_raster(tmp_path / "in.tif", image)
    out = tmp_path / f"objects{suffix}"
    summary = predict_raster(
        source, red_channel, tmp_path / "m.tif", input_size=S, output="mask", polygons_path=out
    )
    assert summary.polygons_written == 4
    info = pyogrio.read_info(out)
    assert CRS.from_user_input(info["crs"]) == CRS_UTM
    _, _, geometry, fields = pyogrio.raw.read(out)
    shapes = shapely.from_wkb(geometry)
    assert all(shape.geom_type == "Polygon" for shape in shapes)
    back = rasterio.features.rasterize(shapes, out_shape=objects.shape, transform=TRANSFORM).astype(bool)
    mask = read_band(tmp_path / "m.tif") == 1
    np.testing.assert_array_equal(mask, objects)
    assert (back & mask).sum() / (back | mask).sum() >= 0.99
    np.testing.assert_array_equal(back, mask)  # pixel-aligned outlines are in fact exact
    areas, pixels = fields[1], fields[2]
    np.testing.assert_allclose(areas, pixels * 0.25)  # 0.5 m pixels
    assert sorted(pixels.tolist()) == sorted(
        int(part.sum()) for part in _components(objects)
    )  # the ring is one polygon (with its hole), not one piece per strip
    assert sum(len(shape.interiors) for shape in shapes) == 1
    np.testing.assert_allclose(fields[3], 1.0)

    # the minimum area (m²) drops the small discs; simplification keeps the mask close
    small = tmp_path / f"large{suffix}"
    summary = predict_raster(
        source, red_channel, tmp_path / "m2.tif", input_size=S, output="mask", polygons_path=small,
        min_area=150.0, simplify=0.5,
    )  # fmt: skip
    assert summary.polygons_written == 2
    shapes = shapely.from_wkb(pyogrio.raw.read(small)[2])
    assert sum(shapely.get_num_coordinates(shapes)) < sum(
        shapely.get_num_coordinates(shapely.from_wkb(geometry))
    )


def _components(mask: np.ndarray) -> list[np.ndarray]:
    shapes = rasterio.features.shapes(mask.astype(np.uint8), mask=mask, connectivity=4)
    return [
        rasterio.features.rasterize([geometry], out_shape=mask.shape).astype(bool) for geometry, _ in shapes
    ]


def test_objects_touching_only_at_a_corner_across_a_strip_border_stay_apart(tmp_path):
    objects = np.zeros((120, 100), bool)
    objects[40:48, 10:20] = True  # ends on row 47, the last row of the first output strip
    objects[48:60, 20:30] = True  # starts on row 48 one column right: a corner contact only
    objects[48:60, 12:16] = True  # shares an edge with the first
    image = np.stack([objects * 255] * 3).astype(np.uint8)
    source = write_raster(tmp_path / "in.tif", image)
    summary = predict_raster(
        source, red_channel, tmp_path / "m.tif", input_size=S, polygons_path=tmp_path / "p.gpkg"
    )
    assert summary.polygons_written == 2
    pixels = sorted(pyogrio.raw.read(tmp_path / "p.gpkg")[3][2].tolist())
    assert pixels == [120, 80 + 48]


# --- inputs: CRS, bands, scaling, options ---------------------------------------------------------------


def test_a_raster_without_crs_warns_and_writes_pixel_coordinates(tmp_path):
    image = np.stack([discs(80, 90, [(40, 45, 20)]) * 255] * 3).astype(np.uint8)
    path = tmp_path / "plain.tif"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path, "w", driver="GTiff", width=90, height=80, count=3, dtype="uint8") as dataset:
            dataset.write(image)
    with pytest.warns(UserWarning, match="has no CRS.*pixel coordinates"):
        predict_raster(
            path,
            red_channel,
            tmp_path / "m.tif",
            input_size=S,
            polygons_path=tmp_path / "p.geojson",
            min_area=10,
        )
    with rasterio.open(tmp_path / "m.tif") as dataset:
        assert dataset.crs is None
    features = json.loads((tmp_path / "p.geojson").read_text())["features"]
    assert len(features) == 1
    minx, miny, maxx, maxy = shapely.geometry.shape(features[0]["geometry"]).bounds
    assert (minx, miny, maxx, maxy) == (25, 20, 66, 61)  # pixel columns / rows
    assert features[0]["properties"]["area"] == features[0]["properties"]["pixels"]


def test_band_selection_and_its_errors(tmp_path):
    image = smooth_rgb(70, 80)
    four = np.concatenate([image, image[:1] // 2])
    source = write_raster(tmp_path / "in.tif", four)
    with rasterio.open(source) as dataset:
        assert RasterSource(dataset).bands == (1, 2, 3)
        assert RasterSource(dataset, bands="4,1,2").bands == (4, 1, 2)
        rgb, _ = RasterSource(dataset, bands="2").read(rasterio.windows.Window(0, 0, 80, 70))
        np.testing.assert_allclose(rgb, np.repeat(image[1][..., None] / 255, 3, axis=2), atol=1e-6)
        with pytest.raises(ValueError, match=r"band 5 is out of range: .* has 4 band\(s\)"):
            RasterSource(dataset, bands="3,2,5")
        with pytest.raises(ValueError, match=r"one band .* or three"):
            RasterSource(dataset, bands="1,2")
        with pytest.raises(ValueError, match="1-based band numbers"):
            RasterSource(dataset, bands="red")
    with pytest.raises(ValueError, match=r"band 0 is out of range"):
        predict_raster(source, red_channel, tmp_path / "o.tif", input_size=S, bands=[0, 1, 2])
    assert not (tmp_path / "o.tif").exists()


def test_tile_and_overlap_options_are_checked(tmp_path):
    source = write_raster(tmp_path / "in.tif", smooth_rgb(70, 70))
    with pytest.raises(ValueError, match="tile size 32 px is smaller than the model's input size 64 px"):
        predict_raster(source, red_channel, tmp_path / "o.tif", input_size=S, tile_size=32)
    with pytest.raises(ValueError, match=r"overlap 40 px must be .* smaller than half the tile size 64"):
        predict_raster(source, red_channel, tmp_path / "o.tif", input_size=S, overlap=40)
    with pytest.raises(ValueError, match="unknown extension"):
        predict_raster(
            source, red_channel, tmp_path / "o.tif", input_size=S, polygons_path=tmp_path / "p.shp"
        )
    with pytest.raises(ValueError, match="output 'labels' is not known"):
        predict_raster(source, red_channel, tmp_path / "o.tif", input_size=S, output="labels")
    with pytest.raises(FileNotFoundError, match=r"missing.tif does not exist"):
        predict_raster(tmp_path / "missing.tif", red_channel, tmp_path / "o.tif", input_size=S)
    (tmp_path / "junk.tif").write_bytes(b"not a raster")
    with pytest.raises(ValueError, match=r"cannot read raster .*junk.tif"):
        predict_raster(tmp_path / "junk.tif", red_channel, tmp_path / "o.tif", input_size=S)
    assert not (tmp_path / "o.tif").exists()


def test_scaling_specs():
    assert parse_scaling("percentile").low == 2 and parse_scaling("percentile").high == 98
    assert parse_scaling("percentile:1,99") == parse_scaling("PERCENTILE:1, 99")
    assert parse_scaling("range:0,10000").high == 10000
    for bad, message in (("gamma", "not known"), ("range:5", "two numbers"), ("range:9,1", "smaller"),
                         ("percentile:2,120", r"\[0, 100\]"), ("minmax:1,2", "takes no values")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            parse_scaling(bad)


def test_16_bit_input_is_stretched_by_percentiles_and_nodata_ignored(tmp_path):
    rng = np.random.default_rng(0)
    values = rng.uniform(300, 4000, size=(3, 120, 130)).astype(np.uint16)
    values[:, :10, :] = 0
    values[:, 10:12, :] = 65000  # few bright outliers: clipped, not stretching the rest
    source = write_raster(tmp_path / "in.tif", values, nodata=0)
    with rasterio.open(source) as dataset:
        reader = RasterSource(dataset)  # auto → percentile 2/98 for 16-bit
        sample = values[:, 10:, :].reshape(3, -1).astype(np.float64)
        np.testing.assert_allclose(reader.low, np.percentile(sample, 2, axis=1), rtol=0.02)
        np.testing.assert_allclose(reader.high, np.percentile(sample, 98, axis=1), rtol=0.02)
        rgb, valid = reader.read(rasterio.windows.Window(0, 0, 130, 120))
    assert not valid[:10].any() and valid[10:].all()
    assert rgb.dtype == np.float32 and rgb.min() == 0 and rgb.max() == 1
    assert 0.4 < rgb[12:].mean() < 0.6
    with rasterio.open(source) as dataset:
        fixed = RasterSource(dataset, scaling="range:0,4000")
        rgb, _ = fixed.read(rasterio.windows.Window(0, 20, 5, 1))
        np.testing.assert_allclose(rgb[..., 0], values[0, 20:21, :5] / 4000, atol=1e-6)


def test_float_input_with_nan_nodata(tmp_path):
    values = np.linspace(-0.2, 1.4, 3 * 90 * 100, dtype=np.float32).reshape(3, 90, 100)
    values[:, 70:, :] = np.nan
    source = write_raster(tmp_path / "in.tif", values, nodata=float("nan"))
    summary = predict_raster(source, red_channel, tmp_path / "p.tif", input_size=S, scaling="none")
    out = read_band(tmp_path / "p.tif")
    np.testing.assert_array_equal(np.isnan(out), np.isnan(values[0]))
    np.testing.assert_allclose(out[:70], np.clip(values[0, :70], 0, 1), atol=1e-6)
    assert summary.tiles_skipped == 0
    predict_raster(source, red_channel, tmp_path / "q.tif", input_size=S, scaling="minmax")
    out = read_band(tmp_path / "q.tif")
    assert np.nanmin(out) == 0 and np.nanmax(out) == pytest.approx(1, abs=1e-3)
    # float without a declared nodata: non-finite values are still nodata
    source = write_raster(tmp_path / "bare.tif", values)
    predict_raster(source, red_channel, tmp_path / "r.tif", input_size=S, scaling="none")
    np.testing.assert_array_equal(np.isnan(read_band(tmp_path / "r.tif")), np.isnan(values[0]))


def test_progress_is_reported_per_tile(tmp_path):
    source = write_raster(tmp_path / "in.tif", smooth_rgb(100, 100))
    seen = []
    summary = predict_raster(
        source,
        red_channel,
        tmp_path / "o.tif",
        input_size=S,
        batch_size=2,
        progress=lambda d, t: seen.append((d, t)),
    )
    assert seen[-1] == (summary.tiles, summary.tiles) and [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_the_engine_does_not_import_torch():
    code = "import sys, rsrefseg.geo; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})  # fmt: skip
    assert result.stdout.strip() == "False"


def test_an_alpha_band_is_not_a_colour_and_marks_nodata(tmp_path):
    image = smooth_rgb(80, 90)
    alpha = np.full((1, 80, 90), 255, np.uint8)
    alpha[0, :, :30] = 0
    source = write_raster(tmp_path / "in.tif", np.concatenate([image, alpha]), photometric="RGB", alpha="YES")
    with rasterio.open(source) as dataset:
        assert RasterSource(dataset).bands == (1, 2, 3)
    predict_raster(source, red_channel, tmp_path / "p.tif", input_size=S)
    out = read_band(tmp_path / "p.tif")
    assert np.isnan(out[:, :30]).all() and not np.isnan(out[:, 30:]).any()


@pytest.mark.parametrize("suffix", [".geojson", ".gpkg"])
def test_no_object_gives_an_empty_layer_in_the_rasters_crs(tmp_path, suffix):
    source = write_raster(tmp_path / "in.tif", np.zeros((3, 70, 70), np.uint8))
    out = tmp_path / f"p{suffix}"
    summary = predict_raster(source, red_channel, tmp_path / "m.tif", input_size=S, polygons_path=out)
    info = pyogrio.read_info(out)
    assert summary.polygons_written == 0 and info["features"] == 0
    assert CRS.from_user_input(info["crs"]) == CRS_UTM
