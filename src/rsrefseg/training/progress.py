"""Training progress: a tqdm bar on a terminal, plain log lines when stdout is a file or a pipe.

A redirected tqdm bar writes one carriage-return frame per refresh into the file; the line form
logs the step, the progress-bar metrics (``train/loss``) and the speed every ``every_n_steps``
optimizer steps, and each validation's ``val/gIoU`` — also into the run folder's ``train.log``.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ProgressBar, TQDMProgressBar

log = logging.getLogger(__name__)


def progress_bar(refresh_rate: int = 10, every_n_steps: int = 50) -> ProgressBar:
    """TQDMProgressBar(refresh_rate) when stdout is a terminal, else :class:`LineProgress`."""
    if sys.stdout.isatty():
        return TQDMProgressBar(refresh_rate=refresh_rate)
    return LineProgress(every_n_steps=every_n_steps)


class LineProgress(ProgressBar):
    """One log line every ``every_n_steps`` optimizer steps and after each validation; nothing per batch."""

    def __init__(self, every_n_steps: int = 50) -> None:
        super().__init__()
        if every_n_steps <= 0:
            raise ValueError(f"every_n_steps must be > 0, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self._enabled = True
        self._last: tuple[float, int] | None = None

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last = (time.monotonic(), trainer.global_step)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if not self._enabled or step == 0 or step % self.every_n_steps or self._last is None:
            return
        if step == self._last[1]:  # gradient accumulation: the step did not move
            return
        now = time.monotonic()
        rate = (step - self._last[1]) / max(now - self._last[0], 1e-9)
        self._last = (now, step)
        total = trainer.max_steps if trainer.max_steps > 0 else trainer.estimated_stepping_batches
        metrics = _format(self.get_metrics(trainer, pl_module))
        log.info("step %d/%s epoch %d %s(%.2f steps/s)", step, total, trainer.current_epoch, metrics, rate)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._enabled or trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        values = {k: v for k, v in metrics.items() if k.startswith("val/") and "/" not in k[4:]}
        log.info("validation at step %d: %s", trainer.global_step, _format(values).strip())


def _format(metrics: dict[str, Any]) -> str:
    parts = []
    for key, value in metrics.items():
        if key == "v_num":
            continue
        value = value.item() if hasattr(value, "item") else value
        parts.append(f"{key} {value:.4f} " if isinstance(value, float) else f"{key} {value} ")
    return "".join(parts)
