"""Tests of the dataset readers, mask decoding, the referring dataset, the data configs and training on
each layout (rsrefseg.data.readers / decode / referring_dataset / datamodule, conf/data/*.yaml)."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import fixtures_layouts as layouts
from conftest import compose_config
from rsrefseg.config.build import build_datamodule
from rsrefseg.data.conversion import prepare
from rsrefseg.data.decode import NonBinaryMaskWarning, decode_mask, decode_segmentation, load_image
from rsrefseg.data.file_check import DataFilesError
from rsrefseg.data.readers import read_jsonl, read_refsegrs, read_risbench, read_rrsisd
from rsrefseg.data.records import CocoSegmentation, MaskFile
from rsrefseg.data.referring_dataset import ReferringDataset, referring_split
from rsrefseg.data.synthetic import SyntheticRefSegDataset, SyntheticSceneGenerator, export_unified_jsonl
from rsrefseg.data.transforms import ResizePad

READERS = {"refsegrs": read_refsegrs, "rrsisd": read_rrsisd, "risbench": read_risbench}
MAKERS = {"refsegrs": layouts.make_refsegrs, "rrsisd": layouts.make_rrsisd, "risbench": layouts.make_risbench}
FOLDERS = {"refsegrs": "RefSegRS", "rrsisd": "RRSIS-D", "risbench": "RISBench"}
# the image folder of each layout, relative to its root (what the release's JSONL file_name is relative to)
IMAGE_DIRS = {"refsegrs": "images", "rrsisd": "images/rrsisd/JPEGImages", "risbench": "img_rgb"}
LAYOUTS = sorted(READERS)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """One folder holding every layout under its default name, as ``paths.data_dir`` would."""
    root = tmp_path_factory.mktemp("data")
    for layout in LAYOUTS:
        MAKERS[layout](root / FOLDERS[layout])
    return root


def fixture_of(data_dir: Path, layout: str) -> layouts.LayoutFixture:
    # regenerating in memory only: the makers are deterministic, so this equals what is on disk
    return MAKERS[layout](data_dir / FOLDERS[layout])


def _items(dataset: ReferringDataset) -> list[dict]:
    return [dataset[i] for i in range(len(dataset))]


def assert_same_items(first: list[dict], second: list[dict]) -> None:
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            if isinstance(a[key], torch.Tensor):
                assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), (a["sample_id"], key)
            else:
                assert a[key] == b[key], (a["sample_id"], key)


# ------------------------------------------------------------------------------------------------
# Each reader yields what the layout holds
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
def test_reader_yields_the_written_samples(data_dir, layout):
    fixture = fixture_of(data_dir, layout)
    for split, truths in fixture.samples.items():
        records = READERS[layout](root=fixture.root, split=split)
        assert len(records) == len(truths)
        ids = [r.sample_id for r in records]
        assert len(set(ids)) == len(ids)
        for position, (record, truth) in enumerate(zip(records, truths, strict=True)):
            assert record.split == split
            assert record.sample_id == f"{split}-{position:05d}-{Path(truth.file_name).stem}"
            assert record.file_name == truth.file_name and record.image_path.is_file()
            assert record.sentence == truth.sentence
            assert record.category == truth.category
            assert np.array_equal(decode_mask(record.mask), truth.mask)
            assert load_image(record.image_path).shape == (*truth.size, 3)
            if layout == "rrsisd":  # instances.json states the size; phrase files do not
                assert record.original_size == truth.size
                assert record.ann_id is not None and record.ref_id is not None


def test_rrsisd_mask_is_the_union_of_its_rle_list(data_dir):
    """Keeping only the first RLE (the release's loader) would lose part of every object."""
    record = read_rrsisd(root=data_dir / "RRSIS-D", split="val")[0]
    assert isinstance(record.mask, CocoSegmentation) and len(record.mask.segmentation) == 2
    union = decode_mask(record.mask)
    first_only = decode_segmentation(record.mask.segmentation[0])
    assert first_only.sum() < union.sum() and not (first_only & ~union).any()


def test_rrsisd_reads_the_categories_id_spelling_and_checks_it(tmp_path):
    fixture = layouts.make_rrsisd(tmp_path / "RRSIS-D")
    records = read_rrsisd(root=fixture.root, split="test")
    assert [r.category for r in records] == [t.category for t in fixture.samples["test"]]
    path = fixture.root / "rrsisd" / "instances.json"
    instances = json.loads(path.read_text())
    instances["annotations"][1]["categories_id"] = 19
    path.write_text(json.dumps(instances))
    split = pickle.loads((fixture.root / "rrsisd" / "refs(unc).p").read_bytes())[1]["split"]
    with pytest.raises(ValueError, match=r"ref_id=\d+.*category_id=\d+.*says 19"):
        read_rrsisd(root=fixture.root, split=split)


def test_known_bad_files_are_skipped_deterministically(data_dir, caplog):
    """RRSIS-D's release list names 00413.jpg, which the fixture's first train ref uses."""
    root = data_dir / "RRSIS-D"
    everything = read_rrsisd(root=root, split="train")
    assert everything[0].file_name == "00413.jpg"
    with caplog.at_level(logging.INFO, logger="rsrefseg.data.records"):
        kept = read_rrsisd(root=root, split="train", skip_files=["00413.jpg", "99999.jpg"])
    assert kept == everything[1:]  # the others keep their ids (positions count before skipping)
    assert "skipped 1 listed sample(s)" in caplog.text and "00413.jpg" in caplog.text
    # RISBench lists names without extension: stems match too
    risbench = read_risbench(root=data_dir / "RISBench", split="train", skip_files=["train_100_1"])
    assert "train_100_1.png" not in {r.file_name for r in risbench} and len(risbench) == 4


# ------------------------------------------------------------------------------------------------
# Raw layout ≡ its converted JSONL ≡ the authors' JSONL
# ------------------------------------------------------------------------------------------------


def _dataset(records, size: int = 64) -> ReferringDataset:
    return ReferringDataset(records, transform=ResizePad(size=size))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_raw_layout_and_its_prepared_jsonl_give_identical_samples(data_dir, tmp_path, layout):
    root = data_dir / FOLDERS[layout]
    out = tmp_path / "unified"
    counts = {s: len(t) for s, t in fixture_of(data_dir, layout).samples.items()}
    overrides = ["data.known_bad_list=none", *(f"data.expected_counts.{s}={n}" for s, n in counts.items())]
    report = prepare(layout=layout, root=root, out=out, overrides=overrides)
    assert report.ok(strict=True), report.defects
    for split in counts:
        raw = READERS[layout](root=root, split=split)
        converted = read_jsonl(root=out, split=split)  # <out>/images links to the raw image folder
        assert [r.sample_id for r in converted] == [r.sample_id for r in raw]
        for a, b in zip(raw, converted, strict=True):
            # mask source (file vs RLE) and stated size (phrase files state none) may differ in form
            same = ("mask", "original_size", "image_root", "source")
            assert {k: v for k, v in dataclasses.asdict(a).items() if k not in same} == {
                k: v for k, v in dataclasses.asdict(b).items() if k not in same
            }
            assert b.image_path.resolve() == a.image_path.resolve()
        assert_same_items(_items(_dataset(raw)), _items(_dataset(converted)))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_release_jsonl_reads_like_the_raw_layout(data_dir, tmp_path, layout):
    """The authors' datainfo/<dataset>_<split>.jsonl, as their converters write it, read as shipped."""
    root = data_dir / FOLDERS[layout]
    write_release = layouts.write_release_jsonl(fixture_of(data_dir, layout), layout, tmp_path)
    assert sorted(p.name for p in write_release.iterdir()) == sorted(
        f"{layout}_{s}.jsonl" for s in ("train", "val", "test")
    )
    for split in ("train", "val", "test"):
        raw = READERS[layout](root=root, split=split)
        release = read_jsonl(
            root=tmp_path,
            split=split,
            file=f"datainfo/{layout}_{{split}}.jsonl",
            image_dir=root / IMAGE_DIRS[layout],
        )
        assert [r.sample_id for r in release] == [r.sample_id for r in raw]
        assert [r.category for r in release] == [r.category for r in raw]
        assert_same_items(_items(_dataset(raw)), _items(_dataset(release)))


def test_synthetic_export_reads_back_through_the_jsonl_reader(tmp_path):
    generator = SyntheticSceneGenerator(seed=0, object_scale=1.4)
    export_unified_jsonl(generator, split_sizes={"val": 4}, out_dir=tmp_path)
    synthetic = SyntheticRefSegDataset(generator, split="val", length=4)
    records = read_jsonl(root=tmp_path, split="val")
    items = _items(_dataset(records, size=64))
    expected = []
    for index in range(4):
        item = synthetic[index]
        del item["expression_type"]  # the JSONL keeps it, but it is the synthetic set's own group key
        expected.append(item)
    assert_same_items(expected, items)


# ------------------------------------------------------------------------------------------------
# Mask decoding in its one place
# ------------------------------------------------------------------------------------------------


def test_decode_polygons_uncompressed_rle_and_zero_one_masks(tmp_path):
    square = decode_segmentation([[2, 2, 10, 2, 10, 8, 2, 8]], size=(12, 16))
    assert square.shape == (12, 16) and square[4, 5] and not square[0, 0] and not square[11, 15]
    mask = np.zeros((6, 7), dtype=bool)
    mask[1:4, 2:6] = True
    runs, previous, count = [], False, 0  # COCO's uncompressed RLE: column-major runs, zeros first
    for value in mask.flatten(order="F"):
        if value != previous:
            runs.append(count)
            previous, count = value, 0
        count += 1
    runs.append(count)
    uncompressed = {"size": [6, 7], "counts": runs}
    assert np.array_equal(decode_segmentation(uncompressed), mask)
    with pytest.raises(ValueError, match="needs the image size"):
        decode_segmentation([[0, 0, 4, 0, 4, 4]])
    with pytest.raises(ValueError, match=r"RLE size \[6, 7\] differs from the image size \[6, 8\]"):
        decode_segmentation(uncompressed, size=(6, 8))
    with pytest.raises(ValueError, match="expected an RLE dict"):
        decode_segmentation([])
    # pycocotools would decode these into (partly uninitialised) masks without a word
    with pytest.raises(ValueError, match=r"runs cover 0 pixels, not 64×40=2560"):
        decode_segmentation({"size": [64, 40], "counts": "0"})
    with pytest.raises(ValueError, match=r"byte 122 at 0 is not an RLE character"):
        decode_segmentation({"size": [64, 40], "counts": "zzzz"})
    # a 0 / 1 mask image is binary, not empty
    path = tmp_path / "zero_one.png"
    layouts.write_mask(path, mask.astype(np.uint8))
    assert np.array_equal(decode_mask(MaskFile(path)), mask)


def test_non_binary_mask_is_thresholded_with_a_warning_naming_the_file(tmp_path):
    values = np.zeros((8, 8), dtype=np.uint8)
    values[2:6, 2:6] = 200
    values[0, 0] = 100  # below the threshold: background
    path = tmp_path / "soft.png"
    layouts.write_mask(path, values)
    with pytest.warns(NonBinaryMaskWarning, match=r"soft\.png.*not two-valued"):
        mask = decode_mask(MaskFile(path))
    assert mask.sum() == 16 and not mask[0, 0]


# ------------------------------------------------------------------------------------------------
# Clear errors: which path was tried, what was expected there
# ------------------------------------------------------------------------------------------------


def test_a_wrong_root_names_the_path_and_what_is_there(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=rf"RefSegRS root folder not found: {tmp_path}/nope.*data\.root"
    ):
        read_refsegrs(root=tmp_path / "nope", split="train")
    layouts.make_refsegrs(tmp_path / "RefSegRS")
    with pytest.raises(FileNotFoundError, match=r"phrase file not found: .*output_phrase_train\.txt"):
        read_refsegrs(root=tmp_path / "RefSegRS", split="train", phrase_file="phrases_{split}.txt")
    # readers only parse the index; building the split checks every file's header, naming each bad one
    reader = functools.partial(read_refsegrs, root=tmp_path / "RefSegRS", image_suffix=".png")
    with pytest.raises(
        DataFilesError,
        match=r"(?s)RefSegRS val: 2 bad file\(s\).* in 4 of 4 samples.*"
        r"missing image .*10003\.png \(sample val-00000-10003, val-00001-10003\)\n"
        r"  missing image .*10004\.png .*images holds: 10000\.tif",
    ):
        referring_split(reader=reader, split="val", transform=ResizePad(size=64), name="RefSegRS")
    with pytest.raises(FileNotFoundError, match=r"RRSIS-D refs pickle not found: .*refs\(unc\)\.p"):
        read_rrsisd(root=tmp_path / "RefSegRS", split="train")
    with pytest.raises(ValueError, match="split='dev'"):
        read_risbench(root=tmp_path, split="dev")


def test_malformed_jsonl_lines_are_named(tmp_path):
    (tmp_path / "images").mkdir()
    good = {"split": "val", "image_id": "a", "sent": "the car", "file_name": "a.png", "segmentation": {}}
    cases = {
        "not json\n": r"val\.jsonl:1: not valid JSON",
        json.dumps({"sent": "x"})
        + "\n": r"val\.jsonl:1: missing field\(s\) \['image_id', 'file_name', 'segmentation'\]",
        "\n"
        + json.dumps({**good, "split": "test"})
        + "\n": r"val\.jsonl:2: split='test' in the file for split 'val'",
        json.dumps({**good, "sent": "  "})
        + "\n": r"1 sample\(s\) have an empty sentence:\n  val-00000-a \(.*val\.jsonl:1, image a\.png\)\n"
        r"leave them out with the override data\.skip_samples=\[val-00000-a\]",
    }
    for text, message in cases.items():
        (tmp_path / "val.jsonl").write_text(text)
        with pytest.raises(ValueError, match=message):
            read_jsonl(root=tmp_path, split="val")
    # a BOM (Windows editors), CRLF line ends and a line separator inside a sentence read as written
    sentence = "the car\u2028 by the road"
    (tmp_path / "val.jsonl").write_bytes(
        b"\xef\xbb\xbf" + (json.dumps({**good, "sent": sentence}, ensure_ascii=False) + "\r\n").encode()
    )
    [record] = read_jsonl(root=tmp_path, split="val", sentence_spaces="keep")
    assert record.sentence == sentence
    # one file for all splits: the split's lines are selected, and an absent split is named
    (tmp_path / "all.jsonl").write_text(json.dumps({**good, "split": "test"}) + "\n")
    with pytest.raises(
        ValueError, match=r"all\.jsonl has no line of split 'val'; splits present: \['test'\]"
    ):
        read_jsonl(root=tmp_path, split="val", file="all.jsonl")


def test_dataset_names_a_mask_that_does_not_fit_its_image(tmp_path):
    fixture = layouts.make_risbench(tmp_path / "RISBench")
    name = fixture.samples["val"][0].file_name
    layouts.write_mask(fixture.root / "mask" / name, np.zeros((10, 12), dtype=np.uint8))
    records = read_risbench(root=fixture.root, split="val")
    message = rf"val-00000-val_100_0: image .*{name} is 48×64, its mask .*mask/{name} is 10×12"
    with pytest.raises(DataFilesError, match=r"\(data\.size_mismatch=error\):\n  " + message + r"\ndata\."):
        ReferringDataset(records, transform=ResizePad(size=64), size_mismatch="error")
    # without the build-time check, loading names it
    dataset = ReferringDataset(
        records, transform=ResizePad(size=64), size_mismatch="error", check_files=False
    )
    with pytest.raises(ValueError, match=message + r" \(data\.size_mismatch=error; found when loading"):
        dataset[0]
    dataset = _dataset(records)
    with pytest.raises(IndexError, match="out of range"):
        dataset[len(dataset)]


# ------------------------------------------------------------------------------------------------
# The data configs and the datamodule
# ------------------------------------------------------------------------------------------------

LOADER = ["data.num_workers=0", "data.pin_memory=false", "data.persistent_workers=false"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_data_config_builds_deterministic_loaders_with_padding_info(data_dir, layout):
    cfg = compose_config(
        "train", [f"data={layout}", f"paths.data_dir={data_dir}", "data.batch_size=2", *LOADER]
    )
    assert cfg.data.image_size == cfg.model.sam.image_size  # the input side follows the model
    datamodule = build_datamodule(cfg.data)
    datamodule.setup("fit")
    datamodule.setup("test")
    fixture = fixture_of(data_dir, layout)
    for split in ("val", "test"):
        dataset = datamodule.dataset(split)
        batches = list(datamodule.split_dataloader(split))
        order = [sid for batch in batches for sid in batch["sample_id"]]
        assert (
            order
            == [r.sample_id for r in dataset.records]
            == [sid for b in datamodule.split_dataloader(split) for sid in b["sample_id"]]
        )
        batch = batches[0]
        size = cfg.data.image_size
        assert batch["image"].shape[1:] == (3, size, size) and batch["valid"].shape[1:] == (1, size, size)
        assert batch["valid"].dtype == torch.bool
        truths = fixture.samples[split]
        for i, original in enumerate(batch["original_mask"]):
            assert batch["original_size"][i] == truths[i].size == tuple(original.shape)
            assert np.array_equal(original.numpy(), truths[i].mask)
        if layout == "rrsisd":
            assert all(c in datamodule.group_names for c in batch["category"])
            assert datamodule.group_key == "category"
    train = next(iter(datamodule.train_dataloader()))
    assert "original_mask" not in train and train["image"].shape[0] == 2


def test_datamodule_names_an_empty_split_and_a_too_small_train_split(data_dir):
    cfg = compose_config(
        "train",
        [
            "data=rrsisd",
            f"paths.data_dir={data_dir}",
            "data.batch_size=8",
            "data.known_bad.release=[00413.jpg,00434.jpg]",
            *LOADER,
        ],
    )
    datamodule = build_datamodule(cfg.data)
    with pytest.raises(
        ValueError, match=r"'train' split has 3 samples, fewer than batch_size=8.*RRSIS-D train"
    ):
        datamodule.dataset("train")
    cfg = compose_config(
        "train",
        [
            "data=risbench",
            f"paths.data_dir={data_dir}",
            "data.known_bad.release=[val_100_0,val_100_1,val_101_0]",
            *LOADER,
        ],
    )
    with pytest.raises(
        ValueError, match=r"the 'val' split is empty \(ReferringDataset\(RISBench val, 0 samples\)\)"
    ):
        build_datamodule(cfg.data).dataset("val")


def test_datamodule_names_a_wrong_data_dir(tmp_path):
    cfg = compose_config("train", ["data=refsegrs", f"paths.data_dir={tmp_path}", *LOADER])
    with pytest.raises(FileNotFoundError, match=rf"RefSegRS root folder not found: {tmp_path}/RefSegRS"):
        build_datamodule(cfg.data).setup("fit")


# ------------------------------------------------------------------------------------------------
# fast_dev_run through the training entry point, on every layout
# ------------------------------------------------------------------------------------------------

FDR = ["debug=fdr", "logger=none", "shuffled_sentence_test=false", "trivial_baselines=false", *LOADER]


@pytest.mark.parametrize("layout", [*LAYOUTS, "jsonl"])
def test_fast_dev_run_on_each_layout(data_dir, tmp_path, layout):
    from rsrefseg.training.run import train

    overrides = [*FDR, f"data={layout}", f"paths.data_dir={data_dir}"]
    if layout == "jsonl":
        generator = SyntheticSceneGenerator(seed=0)
        export_unified_jsonl(generator, split_sizes={"train": 4, "val": 2, "test": 2}, out_dir=tmp_path)
        overrides.append(f"data.root={tmp_path}")
    payload = train(compose_config("train", overrides))
    test = payload["metrics"]["test"]
    assert test["num_samples"] == (
        2 if layout == "jsonl" else len(fixture_of(data_dir, layout).samples["test"])
    )
    assert 0.0 <= test["gIoU"] <= 100.0
