"""Bad input fails early and plainly, and the switches for the release's data conventions.

Every file of every configured split is checked from its header when the datamodule sets up
(rsrefseg.data.file_check); broken RLEs and files met while loading name the sample and where its
index lists it; palette / non-binary masks follow ``data.mask_rule``; empty sentences can be left
out by sample id (``data.skip_samples``); ``data.mask_resize`` and ``data.sentence_spaces``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

import fixtures_layouts as layouts
from conftest import compose_config
from rsrefseg.config.build import build_datamodule
from rsrefseg.data.conversion import prepare
from rsrefseg.data.decode import NonBinaryMaskWarning, decode_mask, read_mask
from rsrefseg.data.file_check import DataFilesError
from rsrefseg.data.readers import read_jsonl, read_refsegrs, read_rrsisd
from rsrefseg.data.records import MaskFile
from rsrefseg.data.referring_dataset import ReferringDataset
from rsrefseg.data.transforms import ResizePad

LOADER = ["data.num_workers=0", "data.pin_memory=false", "data.persistent_workers=false", "data.batch_size=2"]


def _refsegrs_config(root: Path, *overrides: str):
    return compose_config("train", ["data=refsegrs", f"data.root={root}", *LOADER, *overrides])


# ------------------------------------------------------------------------------------------------
# Every split's files, checked at setup from the headers
# ------------------------------------------------------------------------------------------------


def test_setup_checks_every_split_and_names_every_bad_file(tmp_path):
    fixture = layouts.make_refsegrs(tmp_path / "RefSegRS")
    # test lines 2-3 use image 10006 (not the split's first sample); val lines 2-3 use mask 10004
    (fixture.root / "images" / "10006.tif").unlink()
    (fixture.root / "masks" / "10004.tif").write_bytes(b"not an image at all")
    datamodule = build_datamodule(_refsegrs_config(fixture.root).data)
    with pytest.raises(DataFilesError) as raised:
        datamodule.setup("fit")  # fit checks test too, before any step
    message = str(raised.value)
    assert "RefSegRS val: 1 bad file(s) or segmentation(s) in 2 of 4 samples" in message
    assert "unreadable mask " in message and "masks/10004.tif" in message
    assert "(sample val-00002-10004, val-00003-10004)" in message
    assert "RefSegRS test: 1 bad file(s)" in message
    assert (
        "missing image " in message
        and "images/10006.tif (sample test-00002-10006, test-00003-10006)" in message
    )
    assert "images holds: 10000.tif" in message  # what is there instead


def test_training_stops_before_the_first_step_on_a_missing_test_image(tmp_path):
    from rsrefseg.training.run import train

    fixture = layouts.make_refsegrs(tmp_path / "RefSegRS")
    (fixture.root / "images" / "10006.tif").unlink()
    out = tmp_path / "run"
    cfg = _refsegrs_config(
        fixture.root, "debug=fdr", "logger=none", "trivial_baselines=false", f"paths.output_dir={out}"
    )
    with pytest.raises(DataFilesError, match=r"missing image .*10006\.tif"):
        train(cfg)
    assert not (out / "metrics.json").exists() and not list(out.rglob("*.ckpt"))


def test_a_file_broken_past_its_header_is_named_with_its_sample_when_loaded(tmp_path):
    """Headers do not prove the pixels (rsrefseg-prepare decodes them); the loader names what it meets."""
    fixture = layouts.make_rrsisd(tmp_path / "RRSIS-D")
    path = fixture.root / "images" / "rrsisd" / "JPEGImages" / "00441.jpg"
    path.write_bytes(path.read_bytes()[:1500])  # the header survives, the pixels do not
    dataset = ReferringDataset(read_rrsisd(root=fixture.root, split="val"), transform=ResizePad(size=32))
    with pytest.raises(
        ValueError,
        match=r"sample val-00001-00441 \(.*refs\(unc\)\.p ref_id=441\): unreadable image .*00441\.jpg",
    ):
        dataset[1]


def _jsonl(folder: Path, entries: list[dict]) -> Path:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for entry in entries:
        Image.new("RGB", (6, 5), (10, 20, 30)).save(folder / "images" / entry["file_name"])
    (folder / "val.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
    return folder


def _entry(name: str, **fields) -> dict:
    rle = layouts._rle(np.eye(5, 6, dtype=bool))
    return {
        "split": "val",
        "image_id": name,
        "sent": f"the {name}",
        "file_name": f"{name}.png",
        "segmentation": rle,
        **fields,
    }


def test_a_broken_rle_names_the_sample_and_the_line(tmp_path):
    broken = _entry("b", segmentation={"size": [5, 6], "counts": "zzzz"})
    root = _jsonl(tmp_path, [_entry("a"), broken])
    dataset = ReferringDataset(read_jsonl(root=root, split="val"), transform=ResizePad(size=8))
    with pytest.raises(
        ValueError,
        match=r"sample val-00001-b \(.*val\.jsonl:2\): the segmentation of b\.png: undecodable RLE",
    ):
        dataset[1]
    # one without a size cannot even be checked: found when the split is built
    _jsonl(tmp_path, [_entry("a"), _entry("b", segmentation=[{"counts": "x"}])])
    with pytest.raises(DataFilesError, match=r"the segmentation of b\.png: an RLE without a valid 'size'"):
        ReferringDataset(read_jsonl(root=root, split="val"), transform=ResizePad(size=8))


# ------------------------------------------------------------------------------------------------
# Empty sentences: named by sample id, left out with data.skip_samples
# ------------------------------------------------------------------------------------------------


def test_an_empty_sentence_is_named_and_can_be_skipped_by_sample_id(tmp_path):
    root = _jsonl(tmp_path / "set", [_entry("a"), _entry("b", sent=" "), _entry("c")])
    with pytest.raises(
        ValueError,
        match=r"(?s)1 sample\(s\) have an empty sentence:.*val-00001-b.*data\.skip_samples=\[val-00001-b\]",
    ):
        read_jsonl(root=root, split="val")
    assert [r.sample_id for r in read_jsonl(root=root, split="val", skip_samples=["val-00001-b"])] == [
        "val-00000-a",
        "val-00002-c",
    ]
    cfg = compose_config(
        "train", ["data=jsonl", f"data.root={root}", *LOADER, "data.skip_samples=[val-00001-b]"]
    )
    assert len(build_datamodule(cfg.data).dataset("val")) == 2
    # prepare reports it (an error, with the override to use) and accepts the same override
    report = prepare(layout="jsonl", root=root, out=tmp_path / "out", splits=["val"])
    (empty,) = [d for d in report.errors if d.kind == "empty_sentence"]
    assert empty.sample_id == "val-00001-b" and "val.jsonl:2" in empty.message
    assert "data.skip_samples=[val-00001-b]" in empty.message
    report = prepare(
        layout="jsonl",
        root=root,
        out=tmp_path / "out",
        splits=["val"],
        overrides=["data.skip_samples=[val-00001-b]"],
    )
    assert report.ok() and report.splits["val"]["skipped_known_bad"] == 1


# ------------------------------------------------------------------------------------------------
# Mask rules: palette masks, non-binary masks, data.mask_rule
# ------------------------------------------------------------------------------------------------


def _palette_mask(path: Path, indices: np.ndarray, colours: dict[int, tuple[int, int, int]]) -> Path:
    image = Image.fromarray(indices.astype(np.uint8), mode="P")
    palette = [0] * 768
    for index, colour in colours.items():
        palette[3 * index : 3 * index + 3] = colour
    image.putpalette(palette)
    image.save(path)
    return path


def test_palette_masks_are_read_through_their_palette(tmp_path):
    indices = np.zeros((6, 8), dtype=np.uint8)
    indices[1:4, 2:6] = 2  # the object is palette index 2, as many tools write it
    path = _palette_mask(tmp_path / "two.png", indices, {0: (0, 0, 0), 2: (255, 255, 255)})
    assert np.array_equal(decode_mask(MaskFile(path)), indices == 2)  # was empty: 2 is not > 127
    indices[0, 0] = 3
    several = _palette_mask(
        tmp_path / "three.png", indices, {0: (0, 0, 0), 2: (255, 255, 255), 3: (0, 128, 0)}
    )
    with pytest.raises(
        ValueError,
        match=r"palette mask .*three\.png uses indices \[0, 2, 3\] with colours .*"
        r"\(0, 128, 0\).*data\.mask_rule=nonzero",
    ):
        decode_mask(MaskFile(several))
    with pytest.warns(
        NonBinaryMaskWarning, match=r"three\.png is not two-valued.*nonzero taken as the object"
    ):
        assert np.array_equal(decode_mask(MaskFile(several, rule="nonzero")), indices != 0)


def test_mask_rule_nonzero_is_the_releases_reading(tmp_path):
    values = np.zeros((6, 8), dtype=np.uint8)
    values[1:3, 1:3] = 255
    values[4, 4:6] = 100  # below our threshold, but nonzero
    path = tmp_path / "soft.png"
    layouts.write_mask(path, values)
    assert read_mask(path).mask.sum() == 4 and not read_mask(path).two_valued
    assert read_mask(path, "nonzero").mask.sum() == 6
    with pytest.raises(
        ValueError, match=r"data\.mask_rule='above'; expected one of \['threshold', 'nonzero'\]"
    ):
        MaskFile(path, rule="above")
    fixture = layouts.make_refsegrs(tmp_path / "RefSegRS")
    layouts.write_mask(fixture.root / "masks" / "10003.tif", np.pad(values, ((0, 26), (0, 52))))
    for rule, count in (("threshold", 4), ("nonzero", 6)):
        cfg = _refsegrs_config(fixture.root, f"data.mask_rule={rule}")
        dataset = build_datamodule(cfg.data).dataset("val")
        assert {r.mask.rule for r in dataset.records} == {rule}
        with pytest.warns(NonBinaryMaskWarning):
            assert int(dataset[0]["original_mask"].sum()) == count


# ------------------------------------------------------------------------------------------------
# Switches for the release's conventions: data.mask_resize, data.sentence_spaces
# ------------------------------------------------------------------------------------------------


def test_mask_resize_nearest_is_the_releases_rule():
    mask = torch.zeros(1, 8, 8)
    mask[:, :, 2] = 1.0  # a one-pixel line: antialiased bilinear weighs it 0.375 (gone), nearest keeps it
    sample = {"image": torch.rand(3, 8, 8), "mask": mask, "sentence": "x"}
    bilinear = ResizePad(size=4)(sample)["mask"][0]
    nearest = ResizePad(size=4, mask_resize="nearest")(sample)["mask"][0]
    assert torch.equal(
        nearest, torch.nn.functional.interpolate(mask[None], size=(4, 4), mode="nearest")[0, 0]
    )
    assert bilinear.sum() == 0 and torch.equal(nearest[:, 1], torch.ones(4))
    assert "mask_resize='nearest'" in repr(ResizePad(size=4, mask_resize="nearest"))
    with pytest.raises(ValueError, match=r"mask_resize='area'"):
        ResizePad(size=4, mask_resize="area")
    cfg = compose_config("train", ["data=rrsisd", "data.mask_resize=nearest"])
    assert instantiate(cfg.data.transforms.train).transforms[-1].mask_resize == "nearest"
    assert instantiate(cfg.data.transforms.eval).mask_resize == "nearest"
    assert compose_config("train", ["data=rrsisd"]).data.mask_resize == "bilinear"


def test_sentence_spaces_keep_is_the_releases_text(tmp_path):
    fixture = layouts.make_refsegrs(tmp_path / "RefSegRS")
    phrases = fixture.root / "output_phrase_val.txt"
    phrases.write_text("10003 the  red   car \n" + "\n".join(phrases.read_text().splitlines()[1:]) + "\n")
    assert read_refsegrs(root=fixture.root, split="val")[0].sentence == "the red car"
    # the release: line.strip().split(" ") and " ".join(item[1:])
    assert (
        read_refsegrs(root=fixture.root, split="val", sentence_spaces="keep")[0].sentence == "the  red   car"
    )
    root = _jsonl(tmp_path / "set", [_entry("a", sent="two  spaces")])
    assert read_jsonl(root=root, split="val", sentence_spaces="keep")[0].sentence == "two  spaces"
    assert read_jsonl(root=root, split="val")[0].sentence == "two spaces"
    cfg = _refsegrs_config(fixture.root, "data.sentence_spaces=keep")
    assert build_datamodule(cfg.data).dataset("val")[0]["sentence"] == "the  red   car"
    with pytest.raises(ValueError, match=r"data\.sentence_spaces='squash'"):
        read_jsonl(root=root, split="val", sentence_spaces="squash")
