"""`rsrefseg-predict`: masks, overlays and a summary per pair; failures isolated; every bad input named.

Most cases run ``main(argv)`` in this process (one torch import); the exit-status cases run the
installed console script in a subprocess.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rsrefseg.cli.predict import main
from rsrefseg.predict import Predictor
from rsrefseg.predict.batch import SUMMARY_FIELDS, read_probability_png
from rsrefseg.predict.pairs import read_pairs
from rsrefseg.predict.speed import benchmark, format_table
from test_checkpoints import backbone_files, build, save_like_lightning

BIN = Path(sys.executable).parent
LONG = " ".join(
    ["the small gray vehicle left of the large building"] * 6
)  # 56 tokens; the tiny CLIP reads 32


@pytest.fixture
def cli(monkeypatch, capsys):
    """``cli(*argv)`` → (exit status, stdout, stderr) of ``main`` in this process."""
    for name in ("RSREFSEG_DEBUG", "HYDRA_FULL_ERROR"):
        monkeypatch.delenv(name, raising=False)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level

    def run(*argv: str | Path) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            code = main([str(a) for a in argv])
        except SystemExit as stop:
            code = stop.code
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    yield run
    root.handlers[:] = handlers
    root.setLevel(level)


def script(*argv: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    """The installed console script in a subprocess."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    for name in ("RSREFSEG_DEBUG", "HYDRA_FULL_ERROR"):
        env.pop(name, None)
    return subprocess.run(
        [str(BIN / "rsrefseg-predict"), *map(str, argv)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def write_images(folder: Path, names: list[str], seed: int = 0) -> list[np.ndarray]:
    """Random RGB PNGs of different sizes (the resize, pad and crop back all matter)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    sizes = [(50, 80), (97, 61), (64, 64), (40, 33)]
    pixels = []
    for i, name in enumerate(names):
        array = rng.integers(0, 256, (*sizes[i % len(sizes)], 3), dtype=np.uint8)
        Image.fromarray(array).save(folder / name)
        pixels.append(array)
    return pixels


def read_mask(path: Path) -> np.ndarray:
    values = np.asarray(Image.open(path))
    assert set(np.unique(values)) <= {0, 255}
    return values == 255


def summary(out: Path) -> list[dict[str, str]]:
    with (out / "summary.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == list(SUMMARY_FIELDS)
    assert json.loads((out / "summary.json").read_text())["counts"] == {
        "ok": sum(r["status"] == "ok" for r in rows),
        "failed": sum(r["status"] == "failed" for r in rows),
    }
    return rows


# --------------------------------------------------------------------------------------------------
# What a run writes
# --------------------------------------------------------------------------------------------------


def test_one_image_writes_the_predictors_mask_an_overlay_and_a_summary(tmp_path, cli, tiny_checkpoint):
    [pixels] = write_images(tmp_path, ["scene one.png"])  # a space in the name
    sentence = "the small gray vehicle left of the large building"
    code, out, err = cli(
        tiny_checkpoint, "--image", tmp_path / "scene one.png", "--sentence", sentence,
        "--out", tmp_path / "out", "--probability",
    )  # fmt: skip
    assert code == 0, err
    assert "1 of 1 masks written" in out
    expected = Predictor.from_checkpoint(tiny_checkpoint).predict(tmp_path / "scene one.png", sentence)
    mask = read_mask(tmp_path / "out" / "scene_one_mask.png")
    np.testing.assert_array_equal(mask, expected.mask)
    assert 0 < mask.sum() < mask.size  # the trained model marks part of the image
    probability = read_probability_png(tmp_path / "out" / "scene_one_probability.png")
    np.testing.assert_allclose(probability, expected.probability, atol=0.5 / 65535 + 1e-7)
    overlay = np.asarray(Image.open(tmp_path / "out" / "scene_one_overlay.png").convert("RGB"))
    scale = overlay.shape[1] // pixels.shape[1]  # small images are magnified for a readable banner
    assert scale > 1 and overlay.shape[0] > pixels.shape[0] * scale  # the sentence's banner below
    image_rows = overlay[: pixels.shape[0] * scale : scale, ::scale]
    unchanged = (image_rows == pixels).all(axis=-1)
    assert unchanged[~mask].all() and not unchanged[mask].all()  # only the mask's outline is drawn
    [row] = summary(tmp_path / "out")
    assert (row["id"], row["status"], row["sentence"], row["source"]) == (
        "scene one",
        "ok",
        sentence,
        "command line",
    )
    assert int(row["foreground_pixels"]) == mask.sum() and (row["height"], row["width"]) == ("50", "80")
    assert row["mask"].endswith("scene_one_mask.png") and float(row["seconds"]) > 0


def test_a_csv_with_failing_rows_writes_the_others_and_exits_1(tmp_path, cli, tiny_checkpoint):
    """Excel's CSV: a byte-order mark, CRLF line ends, a quoted comma, a space in a path; three rows fail."""
    write_images(tmp_path / "imgs", ["a.png", "b c.png"])
    (tmp_path / "imgs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    rows = [
        "Image,Sentence,ID",  # any case
        'imgs/a.png,"the car, left of the tree",first',
        "imgs/b c.png,a ship,second",
        "imgs/missing.png,the road,third",
        "imgs/broken.png,the road,fourth",
        "imgs/a.png,   ,fifth",
        "",  # a blank line is skipped
        f"imgs/a.png,{LONG},sixth",
    ]
    (tmp_path / "pairs.csv").write_bytes(("\ufeff" + "\r\n".join(rows) + "\r\n").encode("utf-8"))
    code, out, err = cli(tiny_checkpoint, "--pairs", tmp_path / "pairs.csv", "--out", tmp_path / "out")
    assert code == 1
    assert "3 of 6 masks written" in out
    result = {row["id"]: row for row in summary(tmp_path / "out")}
    assert list(result) == ["first", "second", "third", "fourth", "fifth", "sixth"]
    assert [result[i]["status"] for i in result] == ["ok", "ok", "failed", "failed", "failed", "ok"]
    assert "image not found" in result["third"]["reason"] and "missing.png" in result["third"]["reason"]
    assert "unreadable image" in result["fourth"]["reason"] and "broken.png" in result["fourth"]["reason"]
    assert "empty sentence" in result["fifth"]["reason"]
    assert result["first"]["sentence"] == "the car, left of the tree"
    assert result["third"]["source"].endswith("pairs.csv:4")
    assert "the last 24 tokens are dropped" in result["sixth"]["notes"]
    for name in ("first", "second", "sixth"):
        assert (tmp_path / "out" / f"{name}_mask.png").is_file()
    assert not list((tmp_path / "out").glob("third*")) and not list((tmp_path / "out").glob("fifth*"))
    assert "third (" in err and "failed: image not found" in err and "3 of 6 pairs failed" in err


def test_jsonl_and_unified_jsonl_and_batch_size_give_the_same_masks(tmp_path, cli, tiny_checkpoint):
    names = ["s0.png", "s1.png", "s2.png", "s3.png"]
    write_images(tmp_path / "data" / "images", names)
    sentences = ["the red car", "a ship", "the large gray building", "the tree"]
    # plain pairs (paths relative to the file's folder; two sentences on one image) and the unified
    # layout of rsrefseg-prepare (file_name relative to images/, a sentence holding U+2028)
    plain = [
        {"image": f"images/{n}", "sentence": s, "id": f"p{i}"}
        for i, (n, s) in enumerate(zip(names, sentences, strict=True))
    ]
    plain.append({"image": "images/s0.png", "sentence": "the road", "id": "p4"})
    unified = [
        {"image_id": i, "sent": s, "file_name": n, "sample_id": f"u{i}", "segmentation": [], "split": "test"}
        for i, (n, s) in enumerate(zip(names, sentences, strict=True))
    ]
    unified[1]["sent"] = "a ship\u2028near the pier"
    (tmp_path / "data" / "pairs.jsonl").write_text("\n".join(json.dumps(p) for p in plain) + "\n\n")
    (tmp_path / "data" / "test.jsonl").write_text(
        "\n".join(json.dumps(u, ensure_ascii=False) for u in unified), encoding="utf-8"
    )
    runs = {
        "batch1": ("--pairs", tmp_path / "data" / "pairs.jsonl", "--batch-size", "1", "--no-overlay"),
        "batch3": ("--pairs", tmp_path / "data" / "pairs.jsonl", "--batch-size", "3", "--no-overlay"),
        "unified": ("--pairs", tmp_path / "data" / "test.jsonl", "--batch-size", "4"),
    }
    for name, argv in runs.items():
        code, _, err = cli(tiny_checkpoint, *argv, "--out", tmp_path / name)
        assert code == 0, err
    assert not list((tmp_path / "batch1").glob("*_overlay.png"))
    assert len(list((tmp_path / "unified").glob("u*_overlay.png"))) == 4
    for i in range(5):
        np.testing.assert_array_equal(
            read_mask(tmp_path / "batch1" / f"p{i}_mask.png"),
            read_mask(tmp_path / "batch3" / f"p{i}_mask.png"),
        )
    for i in (0, 2, 3):  # same image and sentence through the two formats
        np.testing.assert_array_equal(
            read_mask(tmp_path / "batch1" / f"p{i}_mask.png"),
            read_mask(tmp_path / "unified" / f"u{i}_mask.png"),
        )
    rows = summary(tmp_path / "unified")
    assert [r["id"] for r in rows] == ["u0", "u1", "u2", "u3"]
    assert rows[1]["sentence"] == "a ship\u2028near the pier"


def test_several_sentences_on_one_image(tmp_path, cli, tiny_checkpoint):
    write_images(tmp_path, ["scene.png"])
    code, _, err = cli(
        tiny_checkpoint, "--image", tmp_path / "scene.png", "--sentence", "the red car",
        "--sentence", "a ship", "--out", tmp_path / "out", "--id", "my/scene",
    )  # fmt: skip
    assert code == 0, err
    assert [r["id"] for r in summary(tmp_path / "out")] == ["my/scene-1", "my/scene-2"]
    assert {p.name for p in (tmp_path / "out").glob("*_mask.png")} == {
        "my_scene-1_mask.png",
        "my_scene-2_mask.png",
    }


def test_a_raster_goes_to_the_tiling_engine_and_gets_its_outputs(tmp_path, cli, tiny_checkpoint):
    import rasterio
    from affine import Affine

    profile = {"driver": "GTiff", "height": 150, "width": 200, "count": 3, "dtype": "uint8"}
    transform = Affine(0.5, 0, 500000, 0, -0.5, 4100000)
    with rasterio.open(
        tmp_path / "scene.tif", "w", **profile, crs="EPSG:32633", transform=transform
    ) as dataset:
        dataset.write(np.random.default_rng(0).integers(0, 256, (3, 150, 200), dtype=np.uint8))
    argv = [tiny_checkpoint, "--raster", tmp_path / "scene.tif", "--sentence", "the small gray vehicle"]
    code, _, err = cli(*argv, "--out", tmp_path / "x", "--tile-size", "32")
    assert code == 1 and "tile size 32 px is smaller than the model's input size 64 px" in err
    code, out, err = cli(*argv, "--out", tmp_path / "out", "--output", "mask", "--polygons", "geojson")
    assert code == 0, err
    with rasterio.open(tmp_path / "out" / "scene_mask.tif") as result:
        assert (result.crs, result.transform, result.shape) == (
            rasterio.crs.CRS.from_epsg(32633),
            transform,
            (150, 200),
        )
    record = json.loads((tmp_path / "out" / "scene_mask_summary.json").read_text())
    assert record["sentence"] == "the small gray vehicle"
    assert record["tiles"] == 3 * 4  # the model's 64 px tiles every 48 px
    assert (tmp_path / "out" / "scene_polygons.geojson").is_file() and "polygons to" in out
    code, _, err = cli(*argv, "--out", tmp_path / "out")  # the default output: probability
    assert code == 0, err
    code, _, err = cli(*argv, "--out", tmp_path / "out", "--output", "mask")
    assert code == 1 and "scene_mask.tif exists" in err


def test_exif_orientation_is_not_applied_and_the_summary_says_so(tmp_path, cli, tiny_checkpoint):
    """As the datasets read images: pixels as stored, so the mask matches what evaluation would score."""
    pixels = np.random.default_rng(7).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to view"
    Image.fromarray(pixels).save(tmp_path / "photo.jpg", exif=exif, quality=95)
    code, _, err = cli(
        tiny_checkpoint, "--image", tmp_path / "photo.jpg", "--sentence", "a", "--out", tmp_path
    )
    assert code == 0, err
    assert read_mask(tmp_path / "photo_mask.png").shape == (30, 50)  # not (50, 30)
    [row] = summary(tmp_path)
    assert "EXIF orientation 6 not applied" in row["notes"] and "exif_transpose" in row["notes"]
    assert "photo: note: EXIF orientation 6" in err


# --------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------


def test_an_existing_output_is_refused_before_anything_runs_and_force_replaces_it(
    tmp_path, cli, tiny_checkpoint
):
    write_images(tmp_path, ["a.png", "b.png"])
    (tmp_path / "pairs.csv").write_text("image,sentence\na.png,the car\nb.png,a ship\n")
    argv = (tiny_checkpoint, "--pairs", tmp_path / "pairs.csv", "--out", tmp_path / "out")
    assert cli(*argv)[0] == 0
    (tmp_path / "a.png").unlink()  # a second run would now fail that pair: it must not even start
    planted = tmp_path / "out" / "b-3_overlay.png"
    planted.write_bytes(b"mine")
    for path in (tmp_path / "out").iterdir():
        if path != planted:
            path.unlink()
    code, _, err = cli(*argv)
    assert code == 1
    assert err.strip().splitlines() == [
        f"rsrefseg-predict: error: output {planted} exists; "
        "choose another --out folder, or pass --force to replace"
    ]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["b-3_overlay.png"]
    assert planted.read_bytes() == b"mine"
    write_images(tmp_path, ["a.png"])
    code, _, err = cli(*argv, "--force")
    assert code == 0, err
    assert planted.read_bytes().startswith(b"\x89PNG")


def test_an_empty_sentence_is_a_failed_item(tmp_path, cli, tiny_checkpoint):
    write_images(tmp_path, ["scene.png"])
    code, _, err = cli(
        tiny_checkpoint, "--image", tmp_path / "scene.png", "--sentence", " \t", "--out", tmp_path
    )
    assert code == 1
    assert "scene (command line) failed: empty sentence (' \\t'); give a referring expression" in err
    [row] = summary(tmp_path)
    assert row["status"] == "failed" and not (tmp_path / "scene_mask.png").exists()


def test_checkpoints_of_another_project_or_corrupt_are_named(tmp_path, cli):
    import torch

    write_images(tmp_path, ["scene.png"])
    torch.save({"state_dict": {"encoder.weight": torch.zeros(2)}, "epoch": 3}, tmp_path / "other.ckpt")
    (tmp_path / "corrupt.ckpt").write_bytes(b"PK\x03\x04 truncated zip")
    for name, message in [("other.ckpt", "is not an rsrefseg checkpoint"), ("corrupt.ckpt", "corrupt.ckpt")]:
        code, _, err = cli(
            tmp_path / name,
            "--image",
            tmp_path / "scene.png",
            "--sentence",
            "a ship",
            "--out",
            tmp_path / "out",
        )
        assert code == 1
        [line] = err.strip().splitlines()
        assert line.startswith("rsrefseg-predict: error: ") and message in line, line
    assert not (tmp_path / "out").exists()  # nothing written


def test_a_lora_checkpoint_without_its_backbone_files(tmp_path, cli):
    module = build([*backbone_files(tmp_path), "model.finetune=lora"])
    save_like_lightning(module, tmp_path / "lora.ckpt")
    write_images(tmp_path, ["scene.png"])
    argv = [tmp_path / "lora.ckpt", "--image", tmp_path / "scene.png", "--sentence", "a ship"]
    moved = tmp_path / "moved"
    moved.mkdir()
    (tmp_path / "sam.pt").rename(moved / "sam.pt")
    code, _, err = cli(*argv, "--out", tmp_path / "out")
    assert code == 1
    [line] = err.strip().splitlines()
    assert "trained weights only" in line and "sam.pt" in line and "--set" in line, line
    code, _, err = cli(
        *argv, "--out", tmp_path / "out", "--set", f"model.sam.sam.checkpoint={moved / 'sam.pt'}"
    )
    assert code == 0, err


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [
        (
            "picture,text\na.png,a ship\n",
            ".csv",
            r"pairs.csv:1: the header row has no column 'image' or 'sentence'",
        ),
        (
            "image,sentence\na.png,a ship,extra\n",
            ".csv",
            r"pairs.csv:2: 3 fields but the header has 2; quote",
        ),
        (
            '{"image": "a.png", "sentence": "a"}\n{"image": "a.png", \n',
            ".jsonl",
            r"pairs.jsonl:2: not valid JSON",
        ),
        ('{"image": "a.png", "sentence": 3}\n', ".jsonl", r"pairs.jsonl:1: field 'sentence' is a int \(3\)"),
        ('{"picture": "a.png"}\n', ".jsonl", r"pairs.jsonl:1: no 'image' / 'sentence' fields"),
        ('{"file_name": "a.png", "image_id": 1}\n', ".jsonl", r"pairs.jsonl:1: missing field 'sent'"),
        ("image,sentence,id\na.png,x,n1\nb.png,y,n1\n", ".csv", r"pairs.csv:3: id 'n1' .* as .*pairs.csv:2"),
        ("image,sentence\n", ".csv", "holds no pairs"),
        ("image\tsentence\n", ".txt", "unknown pairs file type '.txt'"),
    ],
)
def test_malformed_pairs_files_are_named_by_file_and_line(tmp_path, content, suffix, message):
    path = tmp_path / f"pairs{suffix}"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        read_pairs(path)


def test_pairs_paths_semicolons_tabs_and_windows_separators(tmp_path):
    write_images(tmp_path / "root" / "sub", ["a.png"])
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "p.csv").write_text("sentence;image\nthe car;sub\\a.png\n")
    (tmp_path / "lists" / "p.tsv").write_text("image\tsentence\nsub/a.png\tthe car\n")
    for name in ("p.csv", "p.tsv"):
        [pair] = read_pairs(tmp_path / "lists" / name, image_root=tmp_path / "root")
        assert pair.image == tmp_path / "root" / "sub" / "a.png" and pair.sentence == "the car"
        assert pair.id == "a-2"
    [pair] = read_pairs(tmp_path / "lists" / "p.tsv")  # default: the pairs file's folder
    assert pair.image == tmp_path / "lists" / "sub" / "a.png"


# --------------------------------------------------------------------------------------------------
# The console script: exit statuses
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_console_script_exit_statuses(tmp_path, tiny_checkpoint):
    write_images(tmp_path, ["scene.png"])
    image = ["--image", "scene.png"]
    # 0 with a warning: a sentence longer than the text encoder's context is truncated
    result = script(tiny_checkpoint, *image, "--sentence", LONG, "--out", "long", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "has 56 tokens but the text encoder reads 32: the last 24 tokens are dropped" in result.stderr
    assert "truncated" not in result.stdout and (tmp_path / "long" / "scene_mask.png").is_file()
    # 1: a missing image (summary written first)
    result = script(
        tiny_checkpoint, "--image", "nothing.png", "--sentence", "a", "--out", "miss", cwd=tmp_path
    )
    assert result.returncode == 1
    assert "nothing (command line) failed: image not found: nothing.png" in result.stderr
    assert (tmp_path / "miss" / "summary.csv").is_file()
    # 1: an output that exists
    result = script(tiny_checkpoint, *image, "--sentence", "a", "--out", "long", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"rsrefseg-predict: error: output {Path('long') / 'scene_mask.png'} exists "
        "(and 3 more of the 4 outputs); "
        "choose another --out folder, or pass --force to replace"
    ]
    # 2: a bad command line
    result = script(tiny_checkpoint, *image, "--out", "x", cwd=tmp_path)
    assert result.returncode == 2
    assert "--image needs --sentence" in result.stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--image", "a.png", "--pairs", "p.csv", "--out", "o"], "exactly one of --image, --pairs"),
        (["--pairs", "p.csv", "--sentence", "a", "--out", "o"], "--sentence goes with --image or --raster"),
        (["--image", "a.png", "--sentence", "a"], "--out FOLDER is required"),
        (
            ["--image", "a.png", "--sentence", "a", "--out", "o", "--tile-size", "64"],
            "--tile-size go(es) with --raster",
        ),
        (
            ["--image", "a.png", "--sentence", "a", "--out", "o", "--threshold", "1.5"],
            "strictly between 0 and 1",
        ),
        (
            ["--image", "a.png", "--sentence", "a", "--out", "o", "--batch-size", "0"],
            "expected a positive integer",
        ),
        (["--image", "a.png", "--sentence", "a", "--out", "o", "--set", "novalue"], "is not KEY=VALUE"),
        (
            ["--raster", "r.tif", "--sentence", "a", "--sentence", "b", "--out", "o"],
            "--raster takes one --sentence",
        ),
    ],
)
def test_bad_command_lines_exit_2(cli, argv, message):
    code, _, err = cli("model.ckpt", *argv)
    assert code == 2
    assert message in err


# --------------------------------------------------------------------------------------------------
# Speed
# --------------------------------------------------------------------------------------------------


def test_the_benchmark_times_one_call_against_one_call_per_sentence(tiny_net):
    predictor = Predictor(tiny_net, input_size=64)
    calls = []
    original = predictor.predict_tensors

    def counted(images, sentences):
        calls.append([len(s) for s in sentences])
        return original(images, sentences)

    predictor.predict_tensors = counted
    timings = benchmark(predictor, sentences=3, image_size=(32, 32), repeats=2, warmup=1)
    assert calls == [[3]] * 3 + [[1]] * 9
    assert [(t.calls, t.sentences) for t in timings] == [(1, 3), (3, 3)]
    table = format_table(timings)
    assert "| 3 sentences, one image, 1 call | 1 |" in table and "sentences/s" in table
