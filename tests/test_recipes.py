"""The paper's recipes (METHOD.md §4) as experiment configs, checked value by value, and their schedule."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from conftest import compose_config
from rsrefseg.build import CONFIG_DIR

# dataset → (epochs, lr, T_max / E): METHOD.md §4's table
PAPER = {"rrsisd": (300, 1e-4, 1.3), "risbench": (300, 1e-4, 1.3), "refsegrs": (600, 2e-4, 1.8)}


def choices(cfg) -> dict:
    return dict(cfg.hydra.runtime.choices)


def compose(experiment: str):
    return compose_config("train", [f"experiment={experiment}"], hydra_node=True)


def test_every_experiment_config_composes():
    names = {p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml")}
    assert names >= {*PAPER, *(f"{d}_tiny" for d in PAPER), "synthetic_cpu"}
    for name in names:
        compose_config("train", [f"experiment={name}"])


@pytest.mark.parametrize("dataset", list(PAPER))
def test_paper_recipe_values(dataset):
    epochs, lr, t_max_ratio = PAPER[dataset]
    cfg = compose(dataset)
    picked = choices(cfg)
    assert picked["data"] == dataset
    assert (picked["model/clip"], picked["model/sam"], picked["model/prompter"]) == (
        "siglip2_so400m_512",
        "hiera_l",
        "cascaded",
    )
    assert cfg.model.finetune == "lora" and (
        cfg.model.lora.r,
        cfg.model.lora.alpha,
        cfg.model.lora.dropout,
    ) == (
        16,
        16,
        0.0,
    )
    assert cfg.data.batch_size == 8
    assert cfg.optimizer._target_ == "torch.optim.AdamW" and cfg.optimizer.lr == lr
    assert cfg.optimizer.weight_decay == 0.05
    assert cfg.trainer.max_epochs == epochs and cfg.trainer.check_val_every_n_epoch == 10
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.gradient_clip_val == 3.0
    schedule = cfg.scheduler
    assert schedule.unit == "epoch" and schedule.warmup_epochs == 5 and schedule.eta_min_ratio == 0.01
    assert schedule.constant_until_epoch == pytest.approx(0.1 * epochs)
    assert schedule.t_max_epochs == pytest.approx(t_max_ratio * epochs)


@pytest.mark.parametrize("dataset", list(PAPER))
def test_recipe_schedule_follows_the_formula(dataset):
    """The composed scheduler, stepped like Lightning steps it, gives the formula's lr at chosen steps."""
    epochs, lr, t_max_ratio = PAPER[dataset]
    cfg = compose(dataset)
    steps = 7  # optimizer steps per epoch
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.optimizer.lr)
    scheduler = instantiate(cfg.scheduler, steps_per_epoch=steps)(optimizer)
    begin, t_max = 0.1 * epochs, t_max_ratio * epochs

    def expected(step: int) -> float:
        if step < 5 * steps:
            return lr * (0.01 + 0.99 * step / (5 * steps))
        epoch = step // steps
        if epoch < begin:
            return lr
        return lr * (0.01 + 0.99 * (1 + math.cos(math.pi * (epoch - begin) / t_max)) / 2)

    checkpoints = {0, 1, 17, 5 * steps - 1, 5 * steps, int(begin) * steps - 1, int(begin) * steps + 3}
    checkpoints |= {(epochs // 2) * steps + 2, epochs * steps - 1}
    for step in range(epochs * steps):
        if step in checkpoints:
            assert optimizer.param_groups[0]["lr"] == pytest.approx(expected(step), rel=1e-9), step
        optimizer.step()
        scheduler.step()


@pytest.mark.parametrize("dataset", list(PAPER))
def test_tiny_variant_keeps_the_recipe_but_fits_a_cpu(dataset):
    cfg, paper = compose(f"{dataset}_tiny"), compose(dataset)
    picked = choices(cfg)
    assert picked["data"] == dataset and picked["trainer"] == "cpu"
    assert (picked["model/clip"], picked["model/sam"]) == ("tiny", "tiny") and cfg.model.finetune == "full"
    assert (
        cfg.optimizer == paper.optimizer and cfg.trainer.gradient_clip_val == paper.trainer.gradient_clip_val
    )
    assert cfg.scheduler.unit == "epoch" and cfg.trainer.max_epochs == 3


@pytest.mark.parametrize("dataset", list(PAPER))
def test_tiny_variant_trains_on_the_dataset_layout(tmp_path, dataset):
    """The CPU smoke variant runs end to end on a tiny copy of the dataset in its true layout."""
    import fixtures_layouts as layouts
    from rsrefseg.training.run import train

    maker, folder = {
        "refsegrs": (layouts.make_refsegrs, "RefSegRS"),
        "rrsisd": (layouts.make_rrsisd, "RRSIS-D"),
        "risbench": (layouts.make_risbench, "RISBench"),
    }[dataset]
    fixture = maker(tmp_path / "data" / folder)
    overrides = [
        f"experiment={dataset}_tiny",
        "debug=fdr",
        "logger=none",
        "shuffled_sentence_test=false",
        f"paths.data_dir={tmp_path / 'data'}",
    ]
    payload = train(compose_config("train", overrides))
    test = payload["metrics"]["test"]
    assert test["num_samples"] == len(fixture.samples["test"]) and 0.0 <= test["gIoU"] <= 100.0
    assert "whole_image" in payload["metrics"]
