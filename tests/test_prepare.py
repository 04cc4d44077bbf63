"""Tests of `rsrefseg-prepare` (rsrefseg.cli.prepare): conversion, every check, skip lists, safe writes."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
from PIL import Image

import fixtures_layouts as layouts
from conftest import compose_config
from rsrefseg.cli.prepare import main
from rsrefseg.data.conversion import OverwriteRefused, prepare
from rsrefseg.data.inspection import ERROR_KINDS, format_report
from rsrefseg.data.readers import read_jsonl

REFSEGRS_COUNTS = [
    "data.expected_counts.train=6",
    "data.expected_counts.val=4",
    "data.expected_counts.test=4",
]


@pytest.fixture
def refsegrs(tmp_path) -> layouts.LayoutFixture:
    return layouts.make_refsegrs(tmp_path / "RefSegRS")


@pytest.fixture
def rrsisd(tmp_path) -> layouts.LayoutFixture:
    return layouts.make_rrsisd(tmp_path / "RRSIS-D")


def _by_kind(report) -> dict[str, list]:
    found: dict[str, list] = {}
    for defect in report.defects:
        found.setdefault(defect.kind, []).append(defect)
    return found


# ------------------------------------------------------------------------------------------------
# A clean download converts; the report is deterministic; outputs are shareable
# ------------------------------------------------------------------------------------------------


def test_a_clean_layout_converts_and_reads_back(refsegrs, tmp_path):
    out = tmp_path / "unified"
    report = prepare(layout="refsegrs", root=refsegrs.root, out=out, overrides=REFSEGRS_COUNTS)
    assert report.ok(strict=True) and report.defects == []
    assert report.splits["val"] == {
        "listed": 4,
        "skipped_known_bad": 0,
        "skipped_size_mismatch": 0,
        "kept": 4,
        "expected": 4,
    }
    assert (out / "images").resolve() == (refsegrs.root / "images").resolve()
    saved = json.loads((out / "prepare_report.json").read_text())
    assert saved["ok"] is True and saved["image_dir"] == str(refsegrs.root.resolve() / "images")
    lines = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert len(lines) == 6
    first = lines[0]
    assert set(first) == {
        "split",
        "sample_id",
        "image_id",
        "sent",
        "file_name",
        "height",
        "width",
        "segmentation",
    }
    assert (first["height"], first["width"]) == refsegrs.samples["train"][0].size == (48, 64)
    # readable like any dataset file, not private like a temporary file
    umask = os.umask(0)
    os.umask(umask)
    assert (out / "train.jsonl").stat().st_mode & 0o777 == 0o666 & ~umask
    records = read_jsonl(root=out, split="test")
    assert [r.sentence for r in records] == [t.sentence for t in refsegrs.samples["test"]]


def test_rerunning_on_unchanged_data_leaves_the_files_alone(refsegrs, tmp_path):
    out = tmp_path / "unified"
    prepare(layout="refsegrs", root=refsegrs.root, out=out, overrides=REFSEGRS_COUNTS)
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir() if p.is_file()}
    prepare(layout="refsegrs", root=refsegrs.root, out=out, overrides=REFSEGRS_COUNTS)
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir() if p.is_file()}
    assert after == before


def test_a_different_existing_file_is_only_replaced_with_force(refsegrs, tmp_path):
    out = tmp_path / "unified"
    prepare(layout="refsegrs", root=refsegrs.root, out=out, overrides=REFSEGRS_COUNTS)
    old = (out / "train.jsonl").read_bytes()
    phrases = refsegrs.root / "output_phrase_train.txt"
    phrases.write_text(phrases.read_text().replace("object 0", "object zero", 1))
    with pytest.raises(OverwriteRefused, match=r"--force.*train\.jsonl differs") as refused:
        prepare(layout="refsegrs", root=refsegrs.root, out=out, overrides=REFSEGRS_COUNTS)
    assert refused.value.report.ok()  # the checks ran; only the write was refused
    assert (out / "train.jsonl").read_bytes() == old
    assert "val.jsonl" not in str(refused.value)  # unchanged splits are no clash
    prepare(layout="refsegrs", root=refsegrs.root, out=out, overrides=REFSEGRS_COUNTS, force=True)
    assert "object zero" in (out / "train.jsonl").read_text()


def test_an_images_folder_in_the_way_is_never_replaced(refsegrs, tmp_path):
    out = tmp_path / "unified"
    (out / "images").mkdir(parents=True)
    for force in (False, True):
        with pytest.raises(OverwriteRefused, match=r"images is a real folder"):
            prepare(layout="refsegrs", root=refsegrs.root, out=out, overrides=REFSEGRS_COUNTS, force=force)
    report = prepare(
        layout="refsegrs", root=refsegrs.root, out=out, overrides=REFSEGRS_COUNTS, link_images=False
    )
    assert report.ok() and (out / "images").is_dir() and not (out / "images").is_symlink()


# ------------------------------------------------------------------------------------------------
# Every defect is detected, with a message naming the file
# ------------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Truncated File Read")  # PIL's own note about the file we cut
def test_every_file_defect_is_reported_by_name(refsegrs, tmp_path):
    root = refsegrs.root
    # train lines 0-1 use image 10000, 2-3 use 10001, 4-5 use 10002; val uses 10003-10004; test 10005-10006
    (root / "images" / "10003.tif").unlink()  # missing image (two val lines)
    layouts.truncate(root / "images" / "10000.tif")  # unreadable image
    (root / "masks" / "10005.tif").unlink()  # missing mask
    layouts.write_mask(root / "masks" / "10001.tif", np.zeros((64, 40), dtype=np.uint8))  # empty mask
    soft = np.zeros((48, 64), dtype=np.uint8)
    soft[10:20, 10:30] = 128  # a two-level mask that is not 0 / 255: thresholded away
    soft[20:30, 10:30] = 255
    layouts.write_mask(root / "masks" / "10002.tif", soft[:, :56])  # not two-valued, and 48×56 ≠ 56×56
    phrases = root / "output_phrase_test.txt"
    phrases.write_text(phrases.read_text() + phrases.read_text().splitlines()[-1] + "\n")  # duplicate pair

    out = tmp_path / "unified"
    report = prepare(layout="refsegrs", root=root, out=out)
    found = _by_kind(report)
    assert not report.ok()
    # decoding in worker processes finds the same, in the same order
    assert (
        prepare(layout="refsegrs", root=root, out=tmp_path / "workers", workers=2).defects == report.defects
    )

    def named(kind: str, file: str, count: int) -> None:
        defects = found[kind]
        assert len(defects) == count, defects
        assert all(file in d.message and d.file.endswith(file) for d in defects), defects

    named("missing_image", "images/10003.tif", 2)
    named("unreadable_image", "images/10000.tif", 2)
    named("missing_mask", "masks/10005.tif", 2)
    named("empty_mask", "masks/10001.tif", 2)
    named("non_binary_mask", "masks/10002.tif", 2)
    named("size_mismatch", "images/10002.tif", 2)
    assert "masks/10002.tif is 48×56" in found["size_mismatch"][0].message
    assert "is 56×56" in found["size_mismatch"][0].message
    (duplicate,) = found["duplicate_pair"]
    assert duplicate.sample_id == "test-00004-10006" and "of test-00003-10006" in duplicate.message
    assert "10006.tif" in duplicate.message
    assert {d.split for d in found["count_mismatch"]} == {"train", "val", "test"}
    assert "lists 5 samples; 1817 expected" in next(
        d.message for d in found["count_mismatch"] if d.split == "test"
    )

    # errors stop the conversion: only the report is written, and it says why
    assert sorted(p.name for p in out.iterdir()) == ["prepare_report.json"]
    saved = json.loads((out / "prepare_report.json").read_text())
    assert saved["ok"] is False
    assert saved["defect_counts"]["missing_image"] == 2
    assert {e["kind"] for e in saved["errors"]} <= set(ERROR_KINDS)
    # a failed run's report may be replaced without --force
    (root / "images" / "10003.tif").write_bytes((root / "images" / "10004.tif").read_bytes())
    assert "missing_image" not in _by_kind(prepare(layout="refsegrs", root=root, out=out))


def test_rrsisd_segmentation_and_size_defects_are_reported_by_name(rrsisd, tmp_path):
    root = rrsisd.root
    path = root / "rrsisd" / "instances.json"
    instances = json.loads(path.read_text())
    by_file = {img["file_name"]: img for img in instances["images"]}
    anns = {ann["image_id"]: ann for ann in instances["annotations"]}
    anns[by_file["00420.jpg"]["id"]]["segmentation"] = [{"size": [64, 40], "counts": "zzzz"}]  # bad RLE
    by_file["00427.jpg"]["height"] = 50  # the index states the wrong size
    path.write_text(json.dumps(instances))
    image_dir = root / "images" / "rrsisd" / "JPEGImages"
    Image.new("RGB", (30, 20)).save(image_dir / "00441.jpg")  # the image no longer fits its RLE

    report = prepare(layout="rrsisd", root=root, out=tmp_path / "unified")
    found = _by_kind(report)
    (bad,) = found["bad_segmentation"]
    assert (
        bad.sample_id == "val-00000-00420" and "00420.jpg" in bad.message and "undecodable RLE" in bad.message
    )
    wrong_height, replaced = sorted(found["stated_size_mismatch"], key=lambda d: d.sample_id)
    assert "00427.jpg is 56×56, the index states 50×56" in wrong_height.message
    assert "00441.jpg is 20×30, the index states 64×64" in replaced.message
    (mismatch,) = found["size_mismatch"]
    assert (
        "segmentation of 00441.jpg (ann_id 441) is 64×64" in mismatch.message
        and "00441.jpg is 20×30" in mismatch.message
    )
    assert not report.ok()


def test_warnings_alone_still_write_the_jsonl_unless_strict(refsegrs, tmp_path):
    layouts.write_mask(refsegrs.root / "masks" / "10003.tif", np.zeros((32, 60), dtype=np.uint8))
    report = prepare(
        layout="refsegrs", root=refsegrs.root, out=tmp_path / "lenient", overrides=REFSEGRS_COUNTS
    )
    assert report.ok() and not report.ok(strict=True)
    assert [d.kind for d in report.defects] == ["empty_mask", "empty_mask"]
    assert (tmp_path / "lenient" / "val.jsonl").is_file()
    strict = prepare(
        layout="refsegrs", root=refsegrs.root, out=tmp_path / "strict", overrides=REFSEGRS_COUNTS, strict=True
    )
    assert not strict.ok(strict=True)
    assert sorted(p.name for p in (tmp_path / "strict").iterdir()) == ["prepare_report.json"]


# ------------------------------------------------------------------------------------------------
# Known-bad lists are data in the config
# ------------------------------------------------------------------------------------------------


def test_known_bad_skips_are_counted_and_named(rrsisd, tmp_path):
    report = prepare(layout="rrsisd", root=rrsisd.root, out=tmp_path / "release")
    assert report.splits["train"] == {
        "listed": 5,
        "skipped_known_bad": 1,
        "skipped_size_mismatch": 0,
        "kept": 4,
        "expected": 12181,
    }
    assert report.skipped_known_bad == {"train": ["00413.jpg"], "val": [], "test": []}
    assert report.known_bad_not_found == ["20203.jpg", "22187.jpg"]
    train = read_jsonl(root=tmp_path / "release", split="train")
    assert "00413.jpg" not in {r.file_name for r in train} and len(train) == 4
    # the printed training command carries the categories, in a form Hydra parses
    kept = [t.category for truths in rrsisd.samples.values() for t in truths if t.file_name != "00413.jpg"]
    assert report.categories == sorted(set(kept))
    (override,) = re.findall(r"'(data\.group_names=\[.*\])'", format_report(report))
    cfg = compose_config("train", ["data=jsonl", "data.group_key=category", override])
    assert list(cfg.data.group_names) == report.categories

    # another list, chosen by name; a name in it that matches a stem is skipped too
    report = prepare(
        layout="rrsisd",
        root=rrsisd.root,
        out=tmp_path / "custom",
        overrides=["data.known_bad_list=strict", "data.known_bad.strict=[00413.jpg,00448]"],
    )
    assert report.skipped_known_bad == {"train": ["00413.jpg"], "val": [], "test": ["00448.jpg"]}
    report = prepare(
        layout="rrsisd", root=rrsisd.root, out=tmp_path / "none", overrides=["data.known_bad_list=none"]
    )
    assert report.splits["train"]["kept"] == 5


def test_the_release_jsonl_layout_converts_too(rrsisd, tmp_path):
    layouts.write_release_jsonl(rrsisd, "rrsisd", tmp_path / "release")
    image_dir = rrsisd.root / "images" / "rrsisd" / "JPEGImages"
    overrides = ["data.reader.file='datainfo/rrsisd_{split}.jsonl'", f"data.image_dir={image_dir}"]
    report = prepare(layout="jsonl", root=tmp_path / "release", out=tmp_path / "unified", overrides=overrides)
    assert report.ok() and report.splits["val"]["listed"] == 3
    lines = [json.loads(x) for x in (tmp_path / "unified" / "val.jsonl").read_text().splitlines()]
    assert [x["category_name"] for x in lines] == [t.category for t in rrsisd.samples["val"]]
    assert all(isinstance(x["segmentation"], list) and len(x["segmentation"]) == 2 for x in lines)


# ------------------------------------------------------------------------------------------------
# The command line
# ------------------------------------------------------------------------------------------------


def test_command_line_exit_codes_and_report(refsegrs, tmp_path, capsys):
    out = tmp_path / "unified"
    args = ["--layout", "refsegrs", "--root", str(refsegrs.root), "--out", str(out)]
    assert main([*args, *REFSEGRS_COUNTS]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"\nval +4 +0 +4 +4 +ok\n", printed), printed
    assert f"rsrefseg-train data=jsonl data.root={out}" in printed

    other = ["--layout", "refsegrs", "--root", str(refsegrs.root), "--out", str(tmp_path / "other")]
    assert main([*other, "--splits", "val"]) == 0  # a count mismatch is a warning
    assert "MISMATCH" in capsys.readouterr().out
    strict = ["--layout", "refsegrs", "--root", str(refsegrs.root), "--out", str(tmp_path / "strict")]
    assert main([*strict, "--splits", "val", "--strict"]) == 1
    assert "FAILED (warnings (--strict))" in capsys.readouterr().out
    assert main([*other, "--splits", "val", "--strict"]) == 2  # would replace the lenient run's report
    # the first run's report describes its JSONL: a run with other settings may not replace it
    assert main([*args, "--splits", "val"]) == 2
    assert "prepare_report.json differs" in capsys.readouterr().err

    assert main(["--layout", "refsegrs", "--root", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert f"RefSegRS root folder not found: {tmp_path / 'missing'}" in capsys.readouterr().err
    assert main(["--layout", "nonsense", "--root", str(refsegrs.root), "--out", str(out)]) == 2
    assert "'nonsense' is not a data config" in capsys.readouterr().err
    (refsegrs.root / "output_phrase_val.txt").write_text("10003 the other car\n")
    assert main([*args, *REFSEGRS_COUNTS, "--splits", "val"]) == 2  # would replace a different val.jsonl
    captured = capsys.readouterr()
    assert "val.jsonl differs" in captured.err and "val " in captured.out  # the report is still printed


def test_overrides_after_splits_are_kept(refsegrs, tmp_path, capsys):
    """``--splits val test key=value``: argparse's nargs="+" used to swallow (and reject) the override."""
    args = ["--layout", "refsegrs", "--root", str(refsegrs.root), "--out", str(tmp_path / "out")]
    assert main([*args, "--splits", "val", "test", *REFSEGRS_COUNTS[1:]]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"\nval +4 +0 +4 +4 +ok\n", printed) and re.search(r"\ntest +4 +0 +4 +4 +ok\n", printed)
    assert not re.search(r"\ntrain +\d", printed)  # only the splits asked for
    with pytest.raises(SystemExit):
        main([*args, "--splits", "val", "dev"])
    assert "--splits: ['dev']; expected names among ['train', 'val', 'test']" in capsys.readouterr().err


def test_a_missing_root_is_named_with_the_prepare_option(tmp_path, capsys):
    missing = tmp_path / "RRSIS-D"
    assert main(["--layout", "rrsisd", "--root", str(missing), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"RRSIS-D root folder not found: {missing}" in err
    assert "pass the downloaded dataset's folder as --root" in err and "data.root" not in err
