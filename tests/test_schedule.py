"""Tests for the warm-up / constant / per-epoch cosine learning-rate schedule."""

from __future__ import annotations

import itertools
import math
import pickle

import pytest
import pytorch_lightning as pl
import torch

from rsrefseg.training.schedule import RunLength, build_warmup_constant_cosine, warmup_constant_cosine_factor

STEPS = 100  # steps per epoch used throughout


def _recipe(epochs: int, t_max_ratio: float) -> dict[str, float | int]:
    """The paper's recipe: 5 warm-up epochs, constant to 0.1·E, cosine with T_max = ratio·E."""
    return {
        "steps_per_epoch": STEPS,
        "warmup_epochs": 5,
        "constant_until_epoch": 0.1 * epochs,
        "t_max_epochs": t_max_ratio * epochs,
    }


def _cosine(epoch: int, begin: float, t_max: float) -> float:
    # mmengine CosineAnnealingLR in closed form, eta_min = 0.01·lr.
    return 0.01 + 0.99 * (1 + math.cos(math.pi * (epoch - begin) / t_max)) / 2


RRSISD = _recipe(300, 1.3)
REFSEGRS = _recipe(600, 1.8)


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (0, 0.01),  # first step
        (250, 0.01 + 0.99 * 250 / 500),  # mid warm-up
        (499, 0.01 + 0.99 * 499 / 500),  # last warm-up step
        (500, 1.0),  # end of warm-up
        (29 * STEPS + 99, 1.0),  # last step of the constant phase
        (30 * STEPS, 1.0),  # first cosine epoch: cos(0)
        (31 * STEPS + 50, _cosine(31, 30, 390)),  # second cosine epoch
        (299 * STEPS + 99, _cosine(299, 30, 390)),  # last epoch
    ],
)
def test_rrsisd_recipe_values(step: int, expected: float) -> None:
    assert warmup_constant_cosine_factor(step, **RRSISD) == pytest.approx(expected, rel=1e-12)


def test_cosine_does_not_reach_minimum_by_last_epoch() -> None:
    last_rrsisd = warmup_constant_cosine_factor(300 * STEPS - 1, **RRSISD)
    assert last_rrsisd == pytest.approx(0.01 + 0.99 * (1 + math.cos(math.pi * 269 / 390)) / 2)
    assert 0.2 < last_rrsisd < 0.25
    last_refsegrs = warmup_constant_cosine_factor(600 * STEPS - 1, **REFSEGRS)
    assert last_refsegrs == pytest.approx(_cosine(599, 60, 1080), rel=1e-12)
    assert warmup_constant_cosine_factor(59 * STEPS, **REFSEGRS) == 1.0
    assert warmup_constant_cosine_factor(61 * STEPS, **REFSEGRS) == pytest.approx(_cosine(61, 60, 1080))


def test_cosine_is_constant_within_an_epoch_and_decreasing_across() -> None:
    for epoch in (30, 100, 299):
        values = {warmup_constant_cosine_factor(epoch * STEPS + i, **RRSISD) for i in range(STEPS)}
        assert len(values) == 1
    per_epoch = [warmup_constant_cosine_factor(e * STEPS, **RRSISD) for e in range(30, 300)]
    assert all(a > b for a, b in itertools.pairwise(per_epoch))


def test_step_unit_moves_the_cosine_every_step() -> None:
    kwargs = {"steps_per_epoch": None, "warmup_epochs": 10, "constant_until_epoch": 20, "t_max_epochs": 100}
    factor = lambda step: warmup_constant_cosine_factor(step, unit="step", **kwargs)
    assert factor(0) == pytest.approx(0.01)
    assert factor(5) == pytest.approx(0.01 + 0.99 * 5 / 10)
    assert factor(19) == 1.0
    assert factor(21) == pytest.approx(_cosine(21, 20, 100))
    assert factor(22) < factor(21)
    assert factor(120) == pytest.approx(0.01)
    assert factor(500) == pytest.approx(0.01)  # held at eta_min past T_max


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"steps_per_epoch": 0}, "steps_per_epoch.*0"),
        ({"steps_per_epoch": None}, "steps_per_epoch.*None"),
        ({"warmup_epochs": -1}, "warmup_epochs.*-1"),
        ({"warmup_epochs": 40}, "constant_until_epoch.*30"),
        ({"t_max_epochs": 0}, "t_max_epochs.*0"),
        ({"eta_min_ratio": 1.5}, "eta_min_ratio.*1.5"),
        ({"start_factor": 0.0}, "start_factor.*0.0"),
        ({"unit": "step"}, "steps_per_epoch.*100"),
        ({"unit": "iteration"}, "unit.*iteration"),
    ],
)
def test_invalid_arguments_are_named(override: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        warmup_constant_cosine_factor(0, **{**RRSISD, **override})


def _build(optimizer: torch.optim.Optimizer, run: RunLength, **override: object):
    kwargs = {k: v for k, v in {**RRSISD, **override}.items() if k != "steps_per_epoch"}
    return build_warmup_constant_cosine(optimizer, run=run, **kwargs)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"warmup_epochs": -1}, "warmup_epochs.*-1"),
        ({"warmup_epochs": 40}, "constant_until_epoch.*30"),
        ({"t_max_epochs": 0}, "t_max_epochs.*0"),
        ({"eta_min_ratio": 1.5}, "eta_min_ratio.*1.5"),
        ({"start_factor": 0.0}, "start_factor.*0.0"),
        ({"unit": "iteration"}, "unit.*iteration"),
    ],
)
def test_the_builder_checks_before_the_first_step(override: dict[str, object], message: str) -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match=message):
        _build(optimizer, RunLength(total_steps=300 * STEPS, steps_per_epoch=STEPS), **override)


def test_the_builder_places_epochs_with_the_run_length() -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = _build(optimizer, RunLength(total_steps=300 * 7, steps_per_epoch=7))
    assert scheduler.lr_lambdas[0](5 * 7 - 1) < 1.0 == scheduler.lr_lambdas[0](5 * 7)
    # unit=step ignores the epoch length: its phases count steps
    stepped = _build(optimizer, RunLength(total_steps=500, steps_per_epoch=7), unit="step")
    assert stepped.lr_lambdas[0](4) < 1.0 == stepped.lr_lambdas[0](5)


@pytest.mark.parametrize(
    ("run", "message"),
    [
        (RunLength(total_steps=1000, steps_per_epoch=None), r"unit='epoch'.*trainer\.max_epochs.*unit=step"),
        (RunLength(total_steps=0, steps_per_epoch=10), "at least one optimizer step, got 0"),
    ],
)
def test_a_run_length_the_schedule_cannot_use_is_named(run: RunLength, message: str) -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match=message):
        _build(optimizer, run)


def test_lambdalr_sets_optimizer_lr() -> None:
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([{"params": [param]}, {"params": [], "lr": 2e-4}], lr=1e-4)
    steps_per_epoch, epochs = 3, 300
    scheduler = build_warmup_constant_cosine(
        optimizer,
        run=RunLength(total_steps=steps_per_epoch * epochs, steps_per_epoch=steps_per_epoch),
        warmup_epochs=5,
        constant_until_epoch=30,
        t_max_epochs=390,
    )
    for step in range(steps_per_epoch * epochs):
        epoch = step // steps_per_epoch
        if step < 15:
            expected = 0.01 + 0.99 * step / 15
        elif epoch < 30:
            expected = 1.0
        else:
            expected = _cosine(epoch, 30, 390)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-4 * expected, rel=1e-12)
        assert optimizer.param_groups[1]["lr"] == pytest.approx(2e-4 * expected, rel=1e-12)
        optimizer.step()
        scheduler.step()
    pickle.dumps(scheduler.lr_lambdas[0])  # checkpointable / spawn-safe


# --- wiring: the module hands the trainer's run length to the schedule ---------------------------


def _fit_recording_lr(tmp_path, **trainer_kwargs) -> list[float]:
    """Fit the tiny default with an epoch-unit schedule (2 steps per epoch); the lr factor at each step."""
    from conftest import compose_config
    from rsrefseg.config.build import build_datamodule, build_module

    overrides = ["data.sizes.train=32", "data.batch_size=16", "scheduler.unit=epoch"]
    overrides += ["scheduler.warmup_epochs=1", "scheduler.constant_until_epoch=2", "scheduler.t_max_epochs=4"]
    cfg = compose_config("train", overrides)
    datamodule = build_datamodule(cfg.data)
    module = build_module(cfg, datamodule)
    factors: list[float] = []

    class RecordLr(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            factors.append(trainer.optimizers[0].param_groups[0]["lr"] / cfg.optimizer.lr)

    trainer = pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
        callbacks=[RecordLr()],
        **trainer_kwargs,
    )
    trainer.fit(module, datamodule=datamodule)
    return factors


def test_an_epoch_schedule_counts_the_epoch_when_max_steps_caps_the_run(tmp_path):
    factors = _fit_recording_lr(tmp_path, max_epochs=10, max_steps=3)
    # 2 steps per epoch: warm-up over steps 0-1, constant from epoch 1
    expected = [
        warmup_constant_cosine_factor(
            step, steps_per_epoch=2, warmup_epochs=1, constant_until_epoch=2, t_max_epochs=4
        )
        for step in range(3)
    ]
    assert factors == pytest.approx(expected, rel=1e-6)


def test_an_unbounded_run_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"trainer\.max_epochs=-1 and trainer\.max_steps=-1"):
        _fit_recording_lr(tmp_path, max_epochs=-1, max_steps=-1)
