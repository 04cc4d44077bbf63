"""The release's size quirk: RRSIS-D JPEGs of 800×787 (…802) whose RLE and instances.json say 800×800.

``data.size_mismatch`` decides: ``resize_mask`` (default; the mask resized to the image, nearest, as
the authors' release), ``skip`` or ``error`` — on the raw layout, on the authors' JSONL, in the
datamodule and in ``rsrefseg-prepare`` (rsrefseg.data.file_check / referring_dataset, rsrefseg.cli.prepare).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

import fixtures_layouts as layouts
from conftest import compose_config
from rsrefseg.cli.prepare import main
from rsrefseg.config.build import build_datamodule
from rsrefseg.config.schema import check_config
from rsrefseg.data.conversion import prepare
from rsrefseg.data.decode import resize_mask_nearest
from rsrefseg.data.file_check import DataFilesError
from rsrefseg.data.readers import read_jsonl, read_rrsisd
from rsrefseg.data.referring_dataset import ReferringDataset
from rsrefseg.data.transforms import ResizePad
from rsrefseg.errors import ConfigError

IMAGE_DIR = Path("images/rrsisd/JPEGImages")
#: (split, position, file name, JPEG height, JPEG width) of the quirky samples
QUIRKS = [
    ("val", 0, "00420.jpg", 787, 800),
    ("test", 1, "00448.jpg", 802, 800),
    ("test", 2, "00469.jpg", 800, 801),
]
RELEASE_FILE = "data.reader.file='datainfo/rrsisd_{split}.jsonl'"


@pytest.fixture
def quirk(tmp_path) -> tuple[layouts.LayoutFixture, dict[str, np.ndarray]]:
    fixture = layouts.make_rrsisd(tmp_path / "data" / "RRSIS-D")
    masks = {
        name: layouts.make_release_size_quirk(fixture, name, height=h, width=w) for _, _, name, h, w in QUIRKS
    }
    layouts.write_release_jsonl(fixture, "rrsisd", tmp_path / "release")
    return fixture, masks


def _records(fixture: layouts.LayoutFixture, source: str, split: str):
    if source == "raw":
        return read_rrsisd(root=fixture.root, split=split)
    release = fixture.root.parent.parent / "release"
    return read_jsonl(
        root=release, split=split, file="datainfo/rrsisd_{split}.jsonl", image_dir=fixture.root / IMAGE_DIR
    )


def _dataset(records, **kwargs) -> ReferringDataset:
    return ReferringDataset(records, transform=ResizePad(size=64), name="RRSIS-D val", **kwargs)


def test_nearest_resize_follows_the_release_rule():
    """OpenCV's INTER_NEAREST (the release's mmcv.imresize): output row y takes input row floor(y·h/H)."""
    mask = np.zeros((4, 3), dtype=bool)
    mask[1, 0] = mask[3, 2] = True
    up = resize_mask_nearest(mask, (6, 3))
    # output rows take input rows 0, 0, 1, 2, 2, 3
    assert up.shape == (6, 3) and [int(r) for r in np.nonzero(up[:, 0])[0]] == [2]
    assert [int(r) for r in np.nonzero(up[:, 2])[0]] == [5]
    down = resize_mask_nearest(np.eye(800, dtype=bool), (787, 800))
    rows = np.floor(np.arange(787) * 800 / 787).astype(int)
    assert np.array_equal(down, np.eye(800, dtype=bool)[rows])


@pytest.mark.parametrize("source", ["raw", "release"])
def test_resize_mask_is_the_default_and_logs_each_sample_once(quirk, source, caplog):
    fixture, masks = quirk
    records = _records(fixture, source, "val")
    with caplog.at_level(logging.WARNING, logger="rsrefseg.data.file_check"):
        dataset = _dataset(records)
        items = [dataset[0], dataset[0], dataset[1]]
    (logged,) = [r.getMessage() for r in caplog.records]
    assert "RRSIS-D val: 1 sample(s) whose mask or stated size differs from the image" in logged
    assert "mask resized to the image (nearest) (data.size_mismatch=resize_mask)" in logged
    assert "val-00000-00420: image " in logged and "00420.jpg is 787×800" in logged
    assert "its mask the segmentation of 00420.jpg (ann_id 420) is 800×800" in logged
    assert "the index states 800×800" in logged
    item = items[0]
    # scored at the original size against the mask at the image's size
    assert item["original_size"] == (787, 800) and item["original_mask"].shape == (787, 800)
    expected = resize_mask_nearest(masks["00420.jpg"], (787, 800))
    assert np.array_equal(item["original_mask"].numpy(), expected)
    assert item["mask"].shape == (1, 64, 64) and item["content_size"] == (63, 64)
    assert dataset.size_mismatched == ["val-00000-00420"]
    assert dataset.describe()["size_mismatch"] == {"resized": 1}
    assert len(dataset) == 3


@pytest.mark.parametrize("source", ["raw", "release"])
def test_skip_leaves_the_sample_out_deterministically(quirk, source, caplog):
    fixture, _ = quirk
    records = _records(fixture, source, "test")
    with caplog.at_level(logging.WARNING, logger="rsrefseg.data.file_check"):
        first = _dataset(records, size_mismatch="skip")
        second = _dataset(records, size_mismatch="skip")
    assert [r.sample_id for r in first.records] == [r.sample_id for r in second.records]
    assert [r.sample_id for r in first.records] == ["test-00000-00427"]
    assert first.size_mismatched == ["test-00001-00448", "test-00002-00469"]
    assert first.describe()["size_mismatch"] == {"skipped": 2}
    assert "2 sample(s) whose mask or stated size differs" in caplog.text
    assert "left out (data.size_mismatch=skip)" in caplog.text
    assert "00448.jpg is 802×800" in caplog.text and "00469.jpg is 800×801" in caplog.text


@pytest.mark.parametrize("source", ["raw", "release"])
def test_error_names_every_mismatched_sample(quirk, source):
    fixture, _ = quirk
    with pytest.raises(
        DataFilesError,
        match=r"RRSIS-D val: 1 sample\(s\) whose mask or stated size differs from the image "
        r"\(data\.size_mismatch=error\):\n  val-00000-00420: image .*00420\.jpg is 787×800, its mask .* "
        r"is 800×800, the index states 800×800\ndata\.size_mismatch=resize_mask resizes",
    ):
        _dataset(_records(fixture, source, "val"), size_mismatch="error")
    with pytest.raises(ValueError, match=r"data\.size_mismatch='resize'; expected one of \['resize_mask'"):
        _dataset(_records(fixture, source, "val"), size_mismatch="resize")
    # a misspelt policy is refused when the config is composed, before anything is read
    with pytest.raises(ConfigError, match=r"data\.size_mismatch='resize' .*did you mean 'resize_mask'"):
        check_config(compose_config("train", ["data=rrsisd", "data.size_mismatch=resize"]))


@pytest.mark.parametrize("source", ["raw", "release"])
def test_the_data_configs_train_and_score_on_the_quirky_download(quirk, source):
    """What used to raise at the first such sample: the configured loaders, every split built at setup."""
    fixture, masks = quirk
    overrides = ["data.batch_size=2", "data.num_workers=0", "data.pin_memory=false"]
    overrides += ["data.persistent_workers=false"]
    if source == "raw":
        overrides += ["data=rrsisd", f"paths.data_dir={fixture.root.parent}"]
    else:
        release = fixture.root.parent.parent / "release"
        overrides += [
            "data=jsonl",
            f"data.root={release}",
            RELEASE_FILE,
            f"data.image_dir={fixture.root / IMAGE_DIR}",
        ]
    datamodule = build_datamodule(compose_config("train", overrides).data)
    datamodule.setup("fit")  # train, val and test: the test split is checked before training too
    assert set(datamodule.datasets) == {"train", "val", "test"}
    batch = next(iter(datamodule.split_dataloader("test")))
    assert batch["original_size"][1] == (802, 800)
    assert torch.equal(
        batch["original_mask"][1], torch.from_numpy(resize_mask_nearest(masks["00448.jpg"], (802, 800)))
    )
    assert batch["original_size"][2] == (800, 801) and batch["original_mask"][2].shape == (800, 801)
    assert datamodule.describe()["test"]["size_mismatch"] == {"resized": 2}
    assert next(iter(datamodule.train_dataloader()))["image"].shape[0] == 2

    skipping = build_datamodule(compose_config("train", [*overrides, "data.size_mismatch=skip"]).data)
    skipping.setup("fit")
    assert len(skipping.dataset("val")) == 2 and len(skipping.dataset("test")) == 1


# ------------------------------------------------------------------------------------------------
# rsrefseg-prepare: warnings under resize_mask / skip (exit 0), errors under error (exit 1)
# ------------------------------------------------------------------------------------------------


def _prepare_args(fixture: layouts.LayoutFixture, source: str, out: Path) -> list[str]:
    if source == "raw":
        return ["--layout", "rrsisd", "--root", str(fixture.root), "--out", str(out)]
    release = fixture.root.parent.parent / "release"
    image_dir = f"data.image_dir={fixture.root / IMAGE_DIR}"
    return ["--layout", "jsonl", "--root", str(release), "--out", str(out), RELEASE_FILE, image_dir]


@pytest.mark.parametrize("source", ["raw", "release"])
def test_prepare_resizes_by_default_and_the_output_trains_like_the_raw_layout(
    quirk, source, tmp_path, capsys
):
    fixture, masks = quirk
    out = tmp_path / "unified"
    assert main(_prepare_args(fixture, source, out)) == 0
    printed = capsys.readouterr().out
    assert "warning size_mismatch: 3" in printed and "warning stated_size_mismatch: 3" in printed
    assert "val-00000-00420: mask the segmentation of 00420.jpg (ann_id 420) is 800×800, image " in printed
    assert "00420.jpg is 787×800; mask resized to the image (nearest)" in printed
    report = json.loads((out / "prepare_report.json").read_text())
    assert report["ok"] and report["size_mismatch"] == "resize_mask" and report["errors"] == []
    lines = [json.loads(x) for x in (out / "val.jsonl").read_text().splitlines()]
    assert (lines[0]["height"], lines[0]["width"], lines[0]["mask_resized_from"]) == (787, 800, [800, 800])
    # the converted JSONL holds the resized mask: no mismatch is left, and the samples are the same
    converted = ReferringDataset(read_jsonl(root=out, split="val"), transform=ResizePad(size=64))
    assert converted.size_mismatched == []
    raw = _dataset(_records(fixture, source, "val"))
    for a, b in zip([raw[i] for i in range(3)], [converted[i] for i in range(3)], strict=True):
        assert a["sample_id"] == b["sample_id"] and a["original_size"] == b["original_size"]
        assert torch.equal(a["original_mask"], b["original_mask"]) and torch.equal(a["mask"], b["mask"])
    assert np.array_equal(
        converted[0]["original_mask"].numpy(), resize_mask_nearest(masks["00420.jpg"], (787, 800))
    )


def test_prepare_skip_lists_the_samples_and_error_refuses(quirk, tmp_path, capsys):
    fixture, _ = quirk
    out = tmp_path / "skip"
    assert main([*_prepare_args(fixture, "raw", out), "data.size_mismatch=skip"]) == 0
    printed = capsys.readouterr().out
    assert (
        "left out in val for a size mismatch (data.size_mismatch=skip, 1 samples): val-00000-00420" in printed
    )
    report = prepare(layout="rrsisd", root=fixture.root, out=out, overrides=["data.size_mismatch=skip"])
    assert report.skipped_size_mismatch == {
        "train": [],
        "val": ["val-00000-00420"],
        "test": ["test-00001-00448", "test-00002-00469"],
    }
    assert report.splits["val"]["kept"] == 2 and report.splits["val"]["skipped_size_mismatch"] == 1
    assert {d.kind for d in report.warnings} == {"count_mismatch", "size_mismatch", "stated_size_mismatch"}
    assert [json.loads(x)["sample_id"] for x in (out / "val.jsonl").read_text().splitlines()] == [
        "val-00001-00441",
        "val-00002-00462",
    ]

    refused = tmp_path / "error"
    assert main([*_prepare_args(fixture, "raw", refused), "data.size_mismatch=error"]) == 1
    printed = capsys.readouterr().out
    assert "ERROR size_mismatch: 3" in printed and "ERROR stated_size_mismatch: 3" in printed
    assert sorted(p.name for p in refused.iterdir()) == ["prepare_report.json"]
