"""Tests of `rsrefseg-synthetic` (rsrefseg.cli.synthetic): what it writes reads back as `data=jsonl`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from conftest import compose_config
from rsrefseg.cli.synthetic import main
from rsrefseg.config.build import build_datamodule
from rsrefseg.data.synthetic_export import MANIFEST_NAME, planned_paths


def _export(out: Path, *args: str) -> int:
    return main(["--out", str(out), *args])


def _written(out: Path) -> set[Path]:
    return {p for p in out.rglob("*") if p.is_file()}


def _snapshot(out: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in _written(out)}


def test_export_reads_back_as_data_jsonl_item_for_item(tmp_path, capsys):
    out = tmp_path / "synthetic"
    assert _export(out, "--val", "3", "--test", "2") == 0
    printed = capsys.readouterr().out
    assert f"{out / 'val.jsonl'} (3 samples)" in printed and f"data=jsonl data.root={out}" in printed
    # the clash check names exactly the files the export writes
    sizes = {"val": 3, "test": 2}
    assert _written(out) == {*planned_paths(out, sizes), out / MANIFEST_NAME}

    on_disk = build_datamodule(compose_config("train", ["data=jsonl", f"data.root={out}"]).data)
    on_the_fly = build_datamodule(compose_config("train").data)  # the default run's data
    for split, size in sizes.items():
        assert len(on_disk.dataset(split)) == size
        for index in range(size):
            expected = dict(on_the_fly.dataset(split)[index])
            del expected["expression_type"]  # the synthetic set's group key; the JSONL reader drops it
            item = on_disk.dataset(split)[index]
            assert item.keys() == expected.keys()
            for key, value in expected.items():
                if isinstance(value, torch.Tensor):
                    assert item[key].dtype == value.dtype and torch.equal(item[key], value), (
                        split,
                        index,
                        key,
                    )
                else:
                    assert item[key] == value, (split, index, key)


def test_refuses_to_overwrite_without_force(tmp_path, capsys):
    out = tmp_path / "synthetic"
    assert _export(out, "--val", "2") == 0
    before = _snapshot(out)
    capsys.readouterr()

    assert _export(out, "--val", "2", "--seed", "3") == 2
    error = capsys.readouterr().err
    assert "refusing to replace 3 existing file(s) (use --force)" in error
    assert str(out / "val.jsonl") in error
    assert _snapshot(out) == before

    assert _export(out, "--val", "2", "--seed", "3", "--force") == 0
    lines = [json.loads(line) for line in (out / "val.jsonl").read_text().splitlines()]
    generator = instantiate(compose_config("train", ["data.generator.seed=3"]).data.generator)
    assert [line["sent"] for line in lines] == [generator.sample("val", i).sentence for i in range(2)]
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["splits"]["val"] == {
        "size": 2,
        "generator": {"image_size": 64, "object_scale": 1.4, "seed": 3},
    }
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_another_split_joins_an_export_and_the_manifest_keeps_both(tmp_path):
    out = tmp_path / "synthetic"
    assert _export(out, "--val", "2") == 0
    assert _export(out, "--test", "1", "--seed", "5", "data.generator.object_scale=1.0") == 0
    splits = json.loads((out / MANIFEST_NAME).read_text())["splits"]
    assert splits["val"]["generator"]["seed"] == 0 and splits["val"]["generator"]["object_scale"] == 1.4
    assert splits["test"] == {"size": 1, "generator": {"image_size": 64, "object_scale": 1.0, "seed": 5}}
    assert {p.name for p in out.glob("*.jsonl")} == {"val.jsonl", "test.jsonl"}


def test_never_writes_into_a_linked_image_folder(tmp_path, capsys):
    dataset_images = tmp_path / "dataset_images"
    dataset_images.mkdir()
    out = tmp_path / "prepared"
    out.mkdir()
    (out / "images").symlink_to(dataset_images, target_is_directory=True)
    assert _export(out, "--val", "1", "--force") == 2
    assert "is a link or a file" in capsys.readouterr().err
    assert list(dataset_images.iterdir()) == [] and not (out / "val.jsonl").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--val", "2", "--seed", "-1"], "seed=-1; expected a non-negative integer"),
        (["--val", "2", "data.generator.nope=1"], "nope"),
    ],
)
def test_bad_settings_fail_naming_them_and_write_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "synthetic"
    assert _export(out, *args) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("args", [[], ["--val", "0"], ["--val", "two"]])
def test_bad_sizes_are_usage_errors(tmp_path, args):
    with pytest.raises(SystemExit) as exit_info:
        _export(tmp_path / "synthetic", *args)
    assert exit_info.value.code == 2
