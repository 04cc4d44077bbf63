"""Every `debug=` option on every experiment: composed on all, run on those a CPU can run.

The paper's recipes need pretrained files and GPUs, so they are only composed; their `_tiny`
variants (same data layout, objective and schedule shape) and the default run are run for a few
steps on tiny data.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import compose_config
from rsrefseg.config.build import CONFIG_DIR

DEBUG = sorted(p.stem for p in (Path(CONFIG_DIR) / "debug").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml"))
PAPER = ("rrsisd", "risbench", "refsegrs")
ON_CPU = [e for e in EXPERIMENTS if e not in PAPER]
# cheap versions of each option: the same switches, one step
SHORT = {
    "fdr": [],
    "overfit": ["trainer.max_steps=1", "trainer.max_epochs=1", "trainer.check_val_every_n_epoch=1"],
}


def test_the_lists_are_complete():
    assert set(DEBUG) == set(SHORT) and {"fdr", "overfit"} <= set(DEBUG)
    assert "synthetic_cpu" in ON_CPU and {f"{d}_tiny" for d in PAPER} <= set(ON_CPU)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
@pytest.mark.parametrize("debug", DEBUG)
def test_every_debug_option_composes_on_every_experiment(debug, experiment):
    cfg = compose_config("train", [f"experiment={experiment}", f"debug={debug}"])
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves (required weights stay ???)


def _dataset(experiment: str, tmp_path: Path) -> tuple[list[str], int]:
    """Overrides pointing the experiment at tiny data, and the number of test samples it has."""
    if experiment == "synthetic_cpu":
        return ["data.sizes.train=32", "data.sizes.val=8", "data.sizes.test=8", "data.eval_batch_size=8"], 8
    import fixtures_layouts as layouts

    # the _tiny variants read their dataset in its true layout
    dataset = experiment.removesuffix("_tiny")
    maker, folder = {
        "refsegrs": (layouts.make_refsegrs, "RefSegRS"),
        "rrsisd": (layouts.make_rrsisd, "RRSIS-D"),
        "risbench": (layouts.make_risbench, "RISBench"),
    }[dataset]
    fixture = maker(tmp_path / "data" / folder)
    return [f"paths.data_dir={tmp_path / 'data'}"], len(fixture.samples["test"])


@pytest.mark.parametrize("experiment", ON_CPU)
@pytest.mark.parametrize("debug", DEBUG)
def test_every_debug_option_runs_on_every_cpu_experiment(tmp_path, debug, experiment):
    from rsrefseg.training.run import train

    data_overrides, test_samples = _dataset(experiment, tmp_path)
    overrides = [f"experiment={experiment}", f"debug={debug}", "logger=none", "shuffled_sentence_test=false"]
    cfg = compose_config("train", [*overrides, *data_overrides, *SHORT[debug]])
    payload = train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
    # neither option selects or saves weights
    assert payload["best_checkpoint"] is None and not list(run_dir.rglob("*.ckpt"))
    assert payload["global_step"] == 1
    if debug == "fdr":  # the final weights are tested, with the trivial baselines, on every test sample
        test = payload["metrics"]["test"]
        assert test["num_samples"] == test_samples and 0.0 <= test["gIoU"] <= 100.0
        assert "whole_image" in payload["metrics"]
    else:
        assert "metrics" not in payload


def test_fdr_keeps_the_configured_logger():
    """Lightning's fast_dev_run would swap the loggers for a dummy; fdr states its limits instead."""
    import csv

    from rsrefseg.training.run import train

    cfg = compose_config("train", ["debug=fdr", "logger=csv", "shuffled_sentence_test=false"])
    assert "fast_dev_run" not in cfg.trainer
    train(cfg)
    with (Path(cfg.paths.output_dir) / "csv" / "metrics.csv").open() as f:
        logged = {key for row in csv.DictReader(f) for key, value in row.items() if value}
    assert {"train/loss", "val/gIoU", "test/gIoU", "whole_image/gIoU"} <= logged
