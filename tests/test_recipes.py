"""The paper's recipes (docs/method.md §7) as experiment configs, checked value by value, and schedules."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from conftest import compose_config
from rsrefseg.config.build import CONFIG_DIR
from rsrefseg.training.schedule import RunLength

# dataset → (epochs, lr, T_max / E): the table of docs/method.md §7
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
    scheduler = instantiate(cfg.scheduler)(optimizer, run=RunLength(epochs * steps, steps_per_epoch=steps))
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
def test_recipe_phases_follow_the_epoch_count(dataset):
    """The paper states the constant phase and T_max as fractions of E: recipe.epochs moves them all."""
    _, _, t_max_ratio = PAPER[dataset]
    cfg = compose_config("train", [f"experiment={dataset}", "recipe.epochs=100"])
    assert cfg.trainer.max_epochs == 100
    assert (cfg.scheduler.warmup_epochs, cfg.scheduler.constant_until_epoch) == (5, 10)
    assert cfg.scheduler.t_max_epochs == round(t_max_ratio * 100)
    assert type(cfg.scheduler.constant_until_epoch) is int  # 0.1·100 is 10, not 10.000000000000002


def test_default_run_recipe():
    cfg = compose_config("train")
    schedule = cfg.scheduler
    assert (schedule.unit, schedule.warmup_epochs, schedule.constant_until_epoch) == ("step", 50, 100)
    assert schedule.t_max_epochs == cfg.trainer.max_steps == 1000
    assert cfg.trainer.val_check_interval == 250 and type(cfg.trainer.val_check_interval) is int
    assert (cfg.data.batch_size, cfg.optimizer.lr) == (32, 5e-4)
    assert cfg.trainer.check_val_every_n_epoch is None


@pytest.mark.parametrize(("max_steps", "interval"), [(200, 50), (4, 1), (2, 1), (1301, 325)])
def test_a_shorter_default_run_still_validates(max_steps, interval):
    """`make train ARGS=trainer.max_steps=200` validates 4 times, so it selects and saves a checkpoint."""
    cfg = compose_config("train", [f"trainer.max_steps={max_steps}"])
    assert cfg.trainer.val_check_interval == interval and cfg.scheduler.t_max_epochs == max_steps


def test_an_unbounded_default_run_names_the_key():
    cfg = compose_config("train", ["trainer.max_steps=-1"])
    with pytest.raises(Exception, match=r"trainer\.max_steps=-1.*trainer\.val_check_interval"):
        cfg.trainer.val_check_interval  # noqa: B018


@pytest.mark.parametrize("dataset", list(PAPER))
def test_multi_gpu_recipe_keeps_batchnorm_per_gpu_as_the_release(dataset):
    cfg = compose_config("train", [f"experiment={dataset}", "trainer=ddp"])
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.sync_batchnorm is False
    overrides = [f"experiment={dataset}", "trainer=ddp", "trainer.sync_batchnorm=true"]
    assert compose_config("train", overrides).trainer.sync_batchnorm is True


@pytest.mark.parametrize("dataset", ["rrsisd", "refsegrs", "risbench"])
def test_paper_recipes_follow_the_release_where_a_switch_exists(dataset):
    cfg = compose_config("train", [f"experiment={dataset}"])
    assert cfg.model.lora.split_qkv is True
    assert cfg.model.sam.train_no_mem_embed is True
    assert cfg.model.require_pretrained is True
    assert (cfg.data.size_mismatch, cfg.data.mask_rule) == ("resize_mask", "nonzero")
    assert (cfg.data.mask_resize, cfg.data.sentence_spaces) == ("nearest", "keep")
    # our fixes stay: padding masks, the contrastive ground truth, the antialiased CLIP resize
    assert cfg.model.prompter.text_padding_mask is True
    assert cfg.model.clip.pad_to_longest is False
    assert cfg.loss.contrastive.align_corners is False
    assert cfg.model.clip.antialias is True


def test_a_paper_recipe_refuses_random_init_backbones():
    """Before: `model.sam.sam.checkpoint: ???` in the recipe did not override the SAM config's null, so
    the recipe ran LoRA on random-init SAM with a warning only."""
    cfg = compose_config("train", ["experiment=rrsisd", "model/clip=tiny", "model/sam=hiera_tiny"])
    assert cfg.model.finetune == "lora"
    with pytest.raises(Exception, match=r"finetune=lora needs pretrained model\.clip weights") as info:
        instantiate(cfg.model, _convert_="partial")
    assert "model.require_pretrained=false" in str(info.value)
