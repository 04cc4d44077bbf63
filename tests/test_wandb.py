"""`logger=wandb` end to end with the real wandb client offline, read back from the run's own records.

What a W&B run must hold: the resolved config, parameter table and data report; the metrics under
train/, val/, test/; a fixed validation panel with mask layers; a per-sample test table; the final
metric columns in the summary; its name / group / tags from the job's overrides; and an exit code
that says whether the job failed.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import open_dict

from conftest import compose_config
from rsrefseg.training.run_naming import MAX_TAG_LENGTH, run_identity
from wandb_records import OfflineRun, records

TINY = [
    "logger=wandb",
    "data.sizes.train=32",
    "data.sizes.val=8",
    "data.sizes.test=8",
    "data.batch_size=4",
    "data.eval_batch_size=4",
]
PANEL = 3


def _offline_env(folder: Path) -> dict[str, str]:
    """wandb offline, with its staging and cache folders out of the home directory."""
    return {
        "WANDB_MODE": "offline",
        "WANDB_DATA_DIR": str(folder / "wandb-data"),
        "WANDB_CACHE_DIR": str(folder / "wandb-cache"),
        "WANDB_CONFIG_DIR": str(folder / "wandb-config"),
        "WANDB_SILENT": "true",
    }


def _the_run(run_dir: Path) -> OfflineRun:
    (folder,) = Path(run_dir).glob("wandb/offline-run-*")
    return OfflineRun.read(folder)


def _table(run: OfflineRun, key: str) -> dict:
    """The full logged table (with its image cells): a run's tables travel in a run_table artifact."""
    (path,) = run.folder.glob("run-*.wandb")
    for record in records(path):
        if record.WhichOneof("record_type") == "artifact" and record.artifact.type == "run_table":
            for entry in record.artifact.manifest.contents:
                if entry.path == f"{key}.table.json":
                    return json.loads(Path(entry.local_path).read_text())
    raise AssertionError(f"no table {key!r} in {path}")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny training job with logger=wandb (4 steps, validation at 2 and 4), then its eval."""
    from rsrefseg.evaluation.run import evaluate
    from rsrefseg.training.run import train

    folder = tmp_path_factory.mktemp("wandb")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in _offline_env(folder).items():
            mp.setenv(key, value)
        cfg = compose_config(
            "train",
            [
                *TINY,
                "trainer.max_steps=4",
                "trainer.val_check_interval=2",
                "trainer.log_every_n_steps=1",
                f"callbacks.wandb_panels.val_samples={PANEL}",
            ],
        )
        payload = train(cfg)
        eval_cfg = compose_config("eval", ["logger=wandb", f"ckpt_path={payload['best_checkpoint']}"])
        eval_payload = evaluate(eval_cfg)
    return cfg, payload, eval_cfg, eval_payload


def test_a_training_run_holds_config_metrics_and_summary(trained):
    cfg, payload, _, _ = trained
    run = _the_run(Path(cfg.paths.output_dir))
    assert run.exit_code == 0 and run.job_type == "train"
    # outside Hydra there are no overrides: the run is named by its run folder, not 'train'
    assert run.name == Path(cfg.paths.output_dir).name
    # the resolved config, the parameter table, the data report
    assert run.config["optimizer"]["lr"] == cfg.optimizer.lr
    assert run.config["trainer"]["max_steps"] == 4
    assert run.config["scheduler"]["t_max_epochs"] == 4  # resolved, not '${trainer.max_steps}'
    total = run.config["parameters"]["total"]
    assert 0 < total["trainable"] <= total["total"]
    assert run.config["data_report"] == json.loads(json.dumps(payload["data"]))
    # metrics under train/, val/ (both validations), test/
    assert len(run.logged("train/loss")) == 4
    assert len(run.logged("val/gIoU")) == 2
    assert run.logged("test/gIoU") == [pytest.approx(payload["metrics"]["test"]["gIoU"])]
    # the summary: every metric column of metrics.json (test, control, baselines)
    assert set(payload["metrics"]) == {"test", "test_shuffled", "all_background", "whole_image"}
    for column, values in payload["metrics"].items():
        for name, value in values.items():
            assert run.summary[f"{column}/{name}"] == pytest.approx(value), f"{column}/{name}"


def test_every_validation_logs_the_same_samples_with_both_masks(trained):
    cfg, _, _, _ = trained
    run = _the_run(Path(cfg.paths.output_dir))
    from rsrefseg.config.build import build_datamodule

    val = build_datamodule(cfg.data).dataset("val")
    # captions: '<sentence> [<sample id>, IoU <at this step>]', the first samples of the split
    expected = [(val[i]["sentence"], val[i]["sample_id"]) for i in range(PANEL)]
    captions = run.logged("val/panel/captions")
    assert len(captions) == 2
    for panel in captions:
        assert [(c.split(" [")[0], c.split(" [")[1].split(",")[0]) for c in panel] == expected
    for masks in run.logged("val/panel/all_masks"):
        assert len(masks) == PANEL
        for layers in masks:
            assert set(layers) == {"ground_truth", "prediction"}
            for layer in layers.values():
                assert (run.folder / "files" / layer["path"]).is_file()


def test_the_test_table_has_one_row_per_sample(trained):
    cfg, _, _, _ = trained
    run = _the_run(Path(cfg.paths.output_dir))
    table = _table(run, "test/samples")
    assert table["columns"] == [
        "sample_id",
        "sentence",
        "expression_type",
        "iou",
        "intersection",
        "union",
        "image",
    ]
    rows = [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]
    with (Path(cfg.paths.output_dir) / "samples_test.csv").open() as f:
        scored = {row["sample_id"]: row for row in csv.DictReader(f)}
    assert [r["sample_id"] for r in rows] == sorted(scored) and len(rows) == 8
    for row in rows:
        assert row["iou"] == pytest.approx(float(scored[row["sample_id"]]["iou"]), abs=1e-6)
        assert row["expression_type"] == scored[row["sample_id"]]["group"] != ""
        assert row["sentence"]
        assert set(row["image"]["masks"]) == {"ground_truth", "prediction"}
    # the shuffled-sentence control is a control: no table of its own
    assert not any(key.startswith("test_shuffled/samples") for key in run.summary)


def test_eval_logs_a_run_of_its_own(trained):
    _, _, eval_cfg, eval_payload = trained
    run = _the_run(Path(eval_cfg.paths.output_dir))
    assert run.job_type == "eval" and run.exit_code == 0
    assert run.config["ckpt_path"] == eval_cfg.ckpt_path
    assert run.summary["test/gIoU"] == pytest.approx(eval_payload["metrics"]["test"]["gIoU"])
    assert len(_table(run, "test/samples")["data"]) == 8


def test_debug_fdr_logs_and_a_job_that_raises_finishes_its_run_failed(tmp_path, monkeypatch):
    """debug=fdr keeps the logger (Lightning's fast_dev_run would swap it for a dummy)."""
    from rsrefseg.training.run import train

    for key, value in _offline_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    # one test sample cannot be deranged: the shuffled-sentence pass raises after fit and test
    cfg = compose_config("train", [*TINY, "debug=fdr", "data.sizes.test=1"])
    with pytest.raises(ValueError, match="at least 2 samples"):
        train(cfg)
    run = _the_run(Path(cfg.paths.output_dir))
    assert run.exit_code == 1
    assert len(run.logged("train/loss")) == 1 and len(run.logged("val/gIoU")) == 1
    assert len(run.logged("val/panel/captions")) == 1 and len(run.logged("test/gIoU")) == 1


def _hydra_node(overrides: list[str]):
    return compose_config("train", overrides, hydra_node=True).hydra


def test_a_sweep_job_is_named_by_what_the_sweep_varies(tmp_path):
    sweep_dir = tmp_path / "logs" / "sweeps" / "prompter"
    sweep_dir.mkdir(parents=True)
    # what Hydra's sweeper saves before the jobs start: the sweep's own command line
    sweep = ["model/prompter=cascaded,first_order", "seed=1,2", "trainer.max_steps=4", "logger=wandb"]
    (sweep_dir / "multirun.yaml").write_text(json.dumps({"hydra": {"overrides": {"task": sweep}}}))
    job = ["model/prompter=first_order", "seed=2", "trainer.max_steps=4", "logger=wandb"]
    hydra = _hydra_node(job)
    with open_dict(hydra):
        hydra.mode = "MULTIRUN"
        hydra.sweep.dir = str(sweep_dir)
    identity = run_identity(hydra, fallback_name="unused", log_dir=str(tmp_path / "logs"))
    assert identity.name == "model/prompter=first_order,seed=2"
    assert identity.group == "sweeps/prompter"
    assert identity.tags == ["model/prompter=first_order", "seed=2", "trainer.max_steps=4"]


def test_sweeper_params_name_the_job_too(tmp_path):
    hydra = _hydra_node(["seed=3", "trainer.max_steps=4"])
    with open_dict(hydra):
        hydra.mode = "MULTIRUN"
        hydra.sweep.dir = str(tmp_path / "elsewhere" / "search")  # no multirun.yaml, outside log_dir
        hydra.sweeper.params = {"seed": "1,2,3"}
    identity = run_identity(hydra, fallback_name="unused", log_dir=str(tmp_path / "logs"))
    assert (identity.name, identity.group) == ("seed=3", "search")


def test_a_single_run_is_named_by_its_overrides():
    long = "model.prompter.depths=[1,1,1]," + "x" * 80
    hydra = _hydra_node(["seed=3", "logger=wandb"])
    assert run_identity(hydra, fallback_name="2026-01-01_00-00-00") == run_identity(
        hydra, fallback_name="other"
    )
    identity = run_identity(hydra, fallback_name="2026-01-01_00-00-00")
    assert (identity.name, identity.group, identity.tags) == ("seed=3", None, ["seed=3"])
    plain = run_identity(_hydra_node([]), fallback_name="2026-01-01_00-00-00")
    assert (plain.name, plain.tags) == ("2026-01-01_00-00-00", [])
    assert run_identity(None, fallback_name="folder").name == "folder"
    from rsrefseg.training.run_naming import _tag

    assert len(_tag(long)) == MAX_TAG_LENGTH


@pytest.mark.slow
def test_a_hydra_multirun_gives_one_run_per_job_grouped_and_named(tmp_path):
    """``rsrefseg-train -m … seed=1,2`` with the basic launcher: two W&B runs in one group."""
    sweep_dir = tmp_path / "logs" / "sweeps" / "seeds"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "RSREFSEG_LOG_DIR": str(tmp_path / "logs"),
        **_offline_env(tmp_path),
    }
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "rsrefseg-train"),
            "-m",
            "debug=fdr",
            "logger=wandb",
            "trivial_baselines=false",
            "seed=1,2",
            f"hydra.sweep.dir={sweep_dir}",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = [_the_run(sweep_dir / str(job)) for job in (0, 1)]
    assert [r.name for r in runs] == ["seed=1", "seed=2"]
    assert {r.group for r in runs} == {"sweeps/seeds"}
    assert [sorted(r.tags) for r in runs] == [
        ["debug=fdr", "seed=1", "trivial_baselines=False"],
        ["debug=fdr", "seed=2", "trivial_baselines=False"],
    ]
    assert all(r.exit_code == 0 and r.job_type == "train" for r in runs)
    assert [r.config["seed"] for r in runs] == [1, 2]


@pytest.mark.slow
def test_under_ddp_the_test_table_gathers_every_rank(tmp_path):
    """Two gloo ranks each test half of the split; rank 0 logs one table with every sample."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "RSREFSEG_LOG_DIR": str(tmp_path / "logs"),
        **_offline_env(tmp_path),
    }
    run_dir = tmp_path / "logs" / "ddp"
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "rsrefseg-train"),
            *TINY,
            "debug=fdr",
            "trainer=ddp_sim",
            "shuffled_sentence_test=false",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (offline,) = run_dir.glob("wandb/offline-run-*")  # one run: rank 1 logs nothing of its own
    run = OfflineRun.read(offline)
    rows = _table(run, "test/samples")["data"]
    payload = json.loads((run_dir / "metrics.json").read_text())
    # fdr tests one batch of 4 per rank
    assert len(rows) == payload["metrics"]["test"]["num_samples"] == 8
    assert len({row[0] for row in rows}) == 8


def test_a_resumed_job_continues_its_wandb_run(tmp_path):
    """The W&B run an earlier attempt started in the run folder is continued, not duplicated."""
    from rsrefseg.config.build import build_loggers

    cfg = compose_config("train", ["logger=wandb", f"paths.output_dir={tmp_path}"])
    (fresh,) = build_loggers(cfg)
    assert fresh.version is None  # a new job: W&B picks an id
    for name in ("offline-run-20261203_120000-first1", "offline-run-20261203_130000-second2"):
        (tmp_path / "wandb" / name).mkdir(parents=True)
    (resumed,) = build_loggers(cfg)
    assert resumed.version == "second2"
