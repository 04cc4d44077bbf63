"""rsrefseg-eval scores what it says: each sample once under DDP, the checkpoint's own data, and a record
of the dataset, root, split, resolution and Pr@X convention in every metrics file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import compose_config
from rsrefseg.config.build import build_module
from rsrefseg.evaluation.run import evaluate
from test_entrypoints import run

#: an odd test split: 2 ranks × 3 batches of 2 would pad it to 6 under a repeating sampler
TINY = ["data.sizes.val=4", "data.sizes.test=5", "data.batch_size=2", "data.eval_batch_size=2"]


def write_checkpoint(path: Path, overrides: list[str]) -> Path:
    """A random-init checkpoint of the default network, as ModelCheckpoint writes it (no training)."""
    import torch

    cfg = compose_config("train", overrides)
    torch.manual_seed(0)
    module = build_module(cfg, None, run_config=OmegaConf.to_container(cfg, resolve=True))
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.ckpt", TINY)


@pytest.mark.slow  # two processes (DDP / gloo): the slow set, which CI runs too
def test_ddp_eval_scores_each_sample_once(tmp_path, checkpoint):
    """trainer=ddp_sim re-launches rsrefseg-eval as rank 1; the 5 samples are sharded without repeats.

    Lightning's own sampler would pad the 5 samples to 6 and score one twice.
    """
    args = [f"ckpt_path={checkpoint}", "data=synthetic", *TINY, "trivial_baselines=true"]
    single = evaluate(compose_config("eval", args))["metrics"]
    run("rsrefseg-eval", *args, "trainer=ddp_sim", f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    ddp = json.loads((tmp_path / "metrics_test.json").read_text())["metrics"]
    assert ddp["test"]["num_samples"] == single["test"]["num_samples"] == 5
    rows = (tmp_path / "samples_test.csv").read_text().splitlines()[1:]
    assert len({row.split(",")[0] for row in rows}) == len(rows) == 5
    assert ddp.keys() == single.keys()
    for column, values in single.items():
        assert ddp[column] == pytest.approx(values, rel=1e-6), column


def test_eval_scores_the_checkpoints_own_data_by_default(checkpoint):
    cfg = compose_config("eval", [f"ckpt_path={checkpoint}", "split=val"])
    payload = evaluate(cfg)
    assert payload["metrics"]["val"]["num_samples"] == 4  # the checkpoint's data.sizes.val, not 500
    assert payload["scored_on"] == {
        "dataset": "synthetic",
        "root": None,
        "data_config": "checkpoint",
        "split": "val",
        "input_size": 64,
        "resolution": "original",
        "pr_rule": "IoU > X",
        "threshold": 0.5,
    }
    saved = json.loads((Path(cfg.paths.output_dir) / "metrics_val.json").read_text())
    assert saved["scored_on"] == payload["scored_on"]
    assert "synthetic val split" in (Path(cfg.paths.output_dir) / "metrics_val.md").read_text()


def test_loader_settings_apply_to_the_checkpoints_data(checkpoint):
    payload = evaluate(
        compose_config("eval", [f"ckpt_path={checkpoint}", "data.eval_batch_size=3", "data.num_workers=0"])
    )
    assert (
        payload["metrics"]["test"]["num_samples"] == 5 and payload["scored_on"]["data_config"] == "checkpoint"
    )


def test_a_composed_data_config_wins(checkpoint):
    payload = evaluate(
        compose_config(
            "eval",
            [f"ckpt_path={checkpoint}", "data=synthetic", "data.sizes.test=3", "metrics.inclusive_pr=true"],
        )
    )
    assert payload["metrics"]["test"]["num_samples"] == 3
    assert payload["scored_on"]["data_config"] == "command line"
    assert payload["scored_on"]["pr_rule"] == "IoU >= X"


def test_other_keys_on_the_checkpoints_data_are_refused(checkpoint):
    """The stored data config is resolved: data.sizes.test would not reach the split's length."""
    cfg = compose_config("eval", [f"ckpt_path={checkpoint}", "+data.sizes.test=3"])
    with pytest.raises(ValueError, match=r"data\.sizes.*data=<name>"):
        evaluate(cfg)


def test_a_split_without_original_masks_is_refused_at_the_original_size(tmp_path, checkpoint):
    import fixtures_layouts as layouts

    layouts.make_refsegrs(tmp_path / "data" / "RefSegRS")
    common = [
        f"ckpt_path={checkpoint}",
        f"paths.data_dir={tmp_path / 'data'}",
        "data=refsegrs",
        "data.num_workers=0",
        "data.persistent_workers=false",
        "data.batch_size=2",
        "split=train",  # built with keep_original_mask=false
    ]
    with pytest.raises(ValueError, match=r"'train' split.*original_mask.*metrics\.resolution=input"):
        evaluate(compose_config("eval", common))
    payload = evaluate(compose_config("eval", [*common, "metrics.resolution=input"]))
    assert payload["scored_on"]["resolution"] == "input"
    assert payload["scored_on"]["dataset"] == "RefSegRS"
    assert payload["scored_on"]["root"] == str(tmp_path / "data" / "RefSegRS")


def test_the_checkpoints_dataset_moves_with_data_root(tmp_path):
    """data.root on the stored config moves every stored path inside the old root, as ${data.root} would."""
    import shutil

    import fixtures_layouts as layouts

    layouts.make_refsegrs(tmp_path / "old" / "RefSegRS")
    loader = ["data.num_workers=0", "data.persistent_workers=false"]
    ckpt = write_checkpoint(
        tmp_path / "refsegrs.ckpt", [f"paths.data_dir={tmp_path / 'old'}", "data=refsegrs", *loader]
    )
    shutil.move(tmp_path / "old", tmp_path / "new")
    with pytest.raises(Exception, match=str(tmp_path / "old" / "RefSegRS")):
        evaluate(compose_config("eval", [f"ckpt_path={ckpt}"]))
    new_root = tmp_path / "new" / "RefSegRS"
    payload = evaluate(compose_config("eval", [f"ckpt_path={ckpt}", f"data.root={new_root}"]))
    assert payload["metrics"]["test"]["num_samples"] == 4
    assert payload["scored_on"]["dataset"] == "RefSegRS" and payload["scored_on"]["root"] == str(new_root)
    assert payload["scored_on"]["data_config"] == "checkpoint"


def test_data_root_is_refused_for_data_without_a_folder(checkpoint):
    with pytest.raises(ValueError, match=r"data\.root=/x: .*synthetic.*reads no folder"):
        evaluate(compose_config("eval", [f"ckpt_path={checkpoint}", "data.root=/x"]))


def test_a_checkpoint_from_before_the_record_still_evaluates(tmp_path, checkpoint):
    """Older synthetic checkpoints store no data.name: the record names the class that built the split."""
    import torch

    stored = torch.load(checkpoint, map_location="cpu", weights_only=False)
    del stored["rsrefseg_config"]["data"]["name"]
    torch.save(stored, tmp_path / "old.ckpt")
    payload = evaluate(compose_config("eval", [f"ckpt_path={tmp_path / 'old.ckpt'}"]))
    assert payload["scored_on"]["dataset"] == "SyntheticRefSegDataset"
    assert payload["metrics"]["test"]["num_samples"] == 5
