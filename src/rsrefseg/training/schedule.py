"""The paper's learning-rate schedule: linear warm-up, constant, then cosine (docs/method.md).

It reproduces the release's mmengine chain — LinearLR(start_factor=0.01, per step) over the
warm-up, a constant phase, then CosineAnnealingLR(begin=0.1·E, T_max=1.3·E or 1.8·E,
eta_min=0.01·lr) stepped per *epoch*. Because T_max exceeds the remaining epochs, the cosine does
not reach eta_min by the last epoch; that is the recipe, not a bug.

The phases are stated in the config (in epochs or steps); the run's length — how many optimizer
steps an epoch takes — comes from the trainer at fit time, as a :class:`RunLength`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Literal

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

Unit = Literal["epoch", "step"]


@dataclass(frozen=True)
class RunLength:
    """How long a fit runs, in optimizer steps.

    Attributes:
        total_steps: optimizer steps of the whole fit, > 0.
        steps_per_epoch: optimizer steps per epoch, > 0; None when the run is bounded by
            ``trainer.max_steps`` alone and the epoch length was not counted.
    """

    total_steps: int
    steps_per_epoch: int | None


def warmup_constant_cosine_factor(
    step: int,
    *,
    steps_per_epoch: int | None,
    warmup_epochs: float,
    constant_until_epoch: float,
    t_max_epochs: float,
    eta_min_ratio: float = 0.01,
    start_factor: float = 0.01,
    unit: Unit = "epoch",
) -> float:
    """Learning-rate multiplier at a 0-based optimizer step.

    With ``unit="epoch"`` the phase lengths are epochs and e = step // steps_per_epoch:

    - warm-up, step < warmup_epochs·steps_per_epoch (updated every step):
      start_factor + (1 − start_factor)·step / (warmup_epochs·steps_per_epoch);
    - constant 1 until epoch ``constant_until_epoch``;
    - cosine, e ≥ constant_until_epoch (constant within an epoch):
      eta_min_ratio + (1 − eta_min_ratio)·(1 + cos(π·(e − constant_until_epoch) / t_max_epochs)) / 2,
      held at eta_min_ratio once e − constant_until_epoch ≥ t_max_epochs.

    With ``unit="step"`` the three phase arguments count optimizer steps instead, the cosine
    advances every step (e = step), and ``steps_per_epoch`` must be None or 1.

    Args:
        step: Optimizer step index, ≥ 0.
        steps_per_epoch: Optimizer steps per epoch (required for ``unit="epoch"``).
        warmup_epochs: Warm-up length, ≥ 0.
        constant_until_epoch: End of the constant phase (start of the cosine), ≥ ``warmup_epochs``.
        t_max_epochs: Cosine half-period, > 0.
        eta_min_ratio: Final multiplier of the cosine, in [0, 1].
        start_factor: Multiplier at step 0, in (0, 1].
        unit: Whether the phase arguments are in epochs or in steps.

    Returns:
        The multiplier of the base learning rate.
    """
    per_epoch = _validate(
        steps_per_epoch=steps_per_epoch,
        warmup_epochs=warmup_epochs,
        constant_until_epoch=constant_until_epoch,
        t_max_epochs=t_max_epochs,
        eta_min_ratio=eta_min_ratio,
        start_factor=start_factor,
        unit=unit,
    )
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    return _multiplier(
        step,
        per_epoch=per_epoch,
        warmup_epochs=warmup_epochs,
        constant_until_epoch=constant_until_epoch,
        t_max_epochs=t_max_epochs,
        eta_min_ratio=eta_min_ratio,
        start_factor=start_factor,
    )


def _multiplier(
    step: int,
    *,
    per_epoch: int,
    warmup_epochs: float,
    constant_until_epoch: float,
    t_max_epochs: float,
    eta_min_ratio: float,
    start_factor: float,
) -> float:
    """:func:`warmup_constant_cosine_factor` on arguments already checked (the scheduler's per-step call)."""
    warmup_steps = warmup_epochs * per_epoch
    if step < warmup_steps:
        return start_factor + (1.0 - start_factor) * step / warmup_steps
    epoch = step // per_epoch
    if epoch < constant_until_epoch:
        return 1.0
    progress = min((epoch - constant_until_epoch) / t_max_epochs, 1.0)
    return eta_min_ratio + (1.0 - eta_min_ratio) * (1.0 + math.cos(math.pi * progress)) / 2.0


def build_warmup_constant_cosine(
    optimizer: Optimizer,
    *,
    run: RunLength,
    warmup_epochs: float,
    constant_until_epoch: float,
    t_max_epochs: float,
    eta_min_ratio: float = 0.01,
    start_factor: float = 0.01,
    unit: Unit = "epoch",
) -> LambdaLR:
    """A LambdaLR applying :func:`warmup_constant_cosine_factor`; call ``step()`` per optimizer step.

    In Lightning, return it with ``{"interval": "step"}`` — even in ``unit="epoch"`` the warm-up
    moves every step, and the per-epoch cosine is derived from the step count.

    Args:
        optimizer: The optimizer whose groups' initial lr are the base learning rates.
        run: The fit's length; ``unit="epoch"`` places its phases with ``run.steps_per_epoch``.
        warmup_epochs: See :func:`warmup_constant_cosine_factor`.
        constant_until_epoch: See :func:`warmup_constant_cosine_factor`.
        t_max_epochs: See :func:`warmup_constant_cosine_factor`.
        eta_min_ratio: See :func:`warmup_constant_cosine_factor`.
        start_factor: See :func:`warmup_constant_cosine_factor`.
        unit: See :func:`warmup_constant_cosine_factor`.

    Returns:
        The scheduler; it has already set every group's lr to ``start_factor`` × base lr.
    """
    if run.total_steps <= 0:
        raise ValueError(f"the run must have at least one optimizer step, got {run.total_steps}")
    if unit == "epoch" and run.steps_per_epoch is None:
        raise ValueError(
            "scheduler.unit='epoch' places the schedule's phases in epochs, but this run is bounded by "
            "trainer.max_steps alone (trainer.max_epochs=-1), so its epoch length was not counted: set "
            "trainer.max_epochs (trainer.max_steps may still cap it), or state the phases in steps "
            "with scheduler.unit=step"
        )
    kwargs = {
        "steps_per_epoch": run.steps_per_epoch if unit == "epoch" else None,
        "warmup_epochs": warmup_epochs,
        "constant_until_epoch": constant_until_epoch,
        "t_max_epochs": t_max_epochs,
        "eta_min_ratio": eta_min_ratio,
        "start_factor": start_factor,
        "unit": unit,
    }
    # Checked once, here, rather than at every optimizer step.
    per_epoch = _validate(**kwargs)
    phases = {k: v for k, v in kwargs.items() if k not in ("steps_per_epoch", "unit")}
    # A partial (not a lambda) keeps the scheduler picklable for checkpoints and spawn.
    return LambdaLR(optimizer, lr_lambda=functools.partial(_multiplier, per_epoch=per_epoch, **phases))


def _validate(
    *,
    steps_per_epoch: int | None,
    warmup_epochs: float,
    constant_until_epoch: float,
    t_max_epochs: float,
    eta_min_ratio: float,
    start_factor: float,
    unit: Unit,
) -> int:
    """Checks the schedule arguments; returns the steps per phase unit."""
    if unit == "epoch":
        if steps_per_epoch is None or steps_per_epoch <= 0:
            raise ValueError(f"steps_per_epoch must be a positive integer, got {steps_per_epoch}")
        per_unit = steps_per_epoch
    elif unit == "step":
        if steps_per_epoch not in (None, 1):
            raise ValueError(f"steps_per_epoch must be None or 1 with unit='step', got {steps_per_epoch}")
        per_unit = 1
    else:
        raise ValueError(f"unit must be 'epoch' or 'step', got {unit!r}")
    if warmup_epochs < 0:
        raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
    if constant_until_epoch < warmup_epochs:
        raise ValueError(
            f"constant_until_epoch must be >= warmup_epochs ({warmup_epochs}), got {constant_until_epoch}"
        )
    if t_max_epochs <= 0:
        raise ValueError(f"t_max_epochs must be > 0, got {t_max_epochs}")
    if not 0.0 <= eta_min_ratio <= 1.0:
        raise ValueError(f"eta_min_ratio must lie in [0, 1], got {eta_min_ratio}")
    if not 0.0 < start_factor <= 1.0:
        raise ValueError(f"start_factor must lie in (0, 1], got {start_factor}")
    return per_unit
