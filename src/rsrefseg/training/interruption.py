"""A resumable ``last.ckpt``, kept up to date and written when the run is asked to stop.

:class:`LastCheckpoint` writes ``<dirpath>/last.ckpt`` (weights, optimizer, schedule, loop
progress, the train sampler's position, the RNG states, every callback's state) every
``every_n_steps`` optimizer steps and / or every ``every_n_minutes``, at the end of the fit, and
when the process receives SIGTERM, SIGINT or the scheduler's warning signal. A signal only sets a
flag; the run acts on it at the next batch boundary, where every DDP rank agrees (an all-reduce
of the flag), so the checkpoint is consistent and resumes exactly:

- the save happens after the optimizer step, or after the validation that follows that step (a
  checkpoint taken before a due validation would resume without it), and never on the last batch
  of an epoch (the next epoch's order is drawn afterwards; the save waits one batch);
- the run then stops before the next batch trains, with exit status ``128 + signal number``
  (143 for SIGTERM, 130 for SIGINT, 140 for SIGUSR2) and ``status.json`` ``interrupted``;
- on the warning signal inside a SLURM job (``requeue: true``) rank zero first runs
  ``scontrol requeue $SLURM_JOB_ID``; ``status.json`` says ``preempted`` and the requeued job
  resumes from ``last.ckpt`` by itself (:mod:`rsrefseg.training.resume`).

This is the only signal handling of a run: Lightning's (SIGTERM → a clean stop with status 0,
SLURM auto-requeue on SIGUSR1) is switched off by :func:`take_over_signals`, and submitit's USR2
handler is replaced while the run trains and tests. A second Ctrl-C stops at once.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from pytorch_lightning.callbacks import Checkpoint
from pytorch_lightning.trainer.connectors.signal_connector import _SignalConnector

from rsrefseg.distributed import gather_objects, world_size

log = logging.getLogger(__name__)

LAST_CHECKPOINT = "last.ckpt"
#: the checkpoint key holding every rank's RNG states
RNG_KEY = "rsrefseg_rng"


def signal_number(name: str | int) -> signal.Signals:
    """``"SIGUSR2"``, ``"USR2"`` or ``12`` → ``signal.SIGUSR2``; a clear error for anything else."""
    if isinstance(name, int) and not isinstance(name, bool):
        try:
            return signal.Signals(name)
        except ValueError:
            pass
    elif isinstance(name, str):
        upper = name.strip().upper()
        found = getattr(signal, upper if upper.startswith("SIG") else f"SIG{upper}", None)
        if isinstance(found, signal.Signals):
            return found
    raise ValueError(f"warning_signal={name!r}: expected a signal name such as SIGUSR2 or SIGUSR1, or null")


class Interrupted(SystemExit):
    """The run stopped on a signal after saving ``last.ckpt``; the exit status is ``128 + signal number``.

    Attributes:
        status: ``interrupted`` or ``preempted`` (the SLURM job was requeued).
        record: what ``status.json`` records about the stop (signal, checkpoint, step, requeue).
    """

    def __init__(self, signum: int, *, status: str, record: dict[str, Any]) -> None:
        super().__init__(128 + int(signum))
        self.status, self.record = status, record

    def __str__(self) -> str:
        return f"stopped by {signal.Signals(self.code - 128).name} ({self.status}); exit status {self.code}"


class _InertSignalConnector(_SignalConnector):
    """Lightning's signal connector without its handlers (:class:`LastCheckpoint` owns the signals)."""

    def register_signal_handlers(self) -> None:
        self.received_sigterm = False


def take_over_signals(trainer: pl.Trainer) -> None:
    """Keep Lightning from installing its SIGTERM / SLURM-requeue handlers on ``trainer``.

    Lightning's would turn SIGTERM into a clean stop with exit status 0 at a batch where no
    resumable checkpoint was written, and requeue SLURM jobs on SIGUSR1 by itself.
    """
    if not isinstance(getattr(trainer, "_signal_connector", None), _SignalConnector):
        raise RuntimeError(
            "this Lightning version has no Trainer._signal_connector: LastCheckpoint cannot switch off "
            "Lightning's own SIGTERM handling"
        )
    trainer._signal_connector = _InertSignalConnector(trainer)


def handling_signals(callbacks: list[Any]) -> ExitStack:
    """Install the stop handlers of the run's :class:`LastCheckpoint`, if it has one.

    Returns:
        The entered stack; ``close()`` puts the previous handlers back.
    """
    stack = ExitStack()
    for callback in callbacks:
        if isinstance(callback, LastCheckpoint):
            stack.enter_context(callback.handling_signals())
    return stack


def in_slurm_job() -> bool:
    return "SLURM_JOB_ID" in os.environ


def requeue_slurm_job() -> str | None:
    """``scontrol requeue`` this job (an array task by its array id); returns None or the error."""
    array_job, array_task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    job = f"{array_job}_{array_task}" if array_job and array_task else os.environ["SLURM_JOB_ID"]
    try:
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"scontrol requeue {job}: {error}"
    if result.returncode != 0:
        return f"scontrol requeue {job} exited with {result.returncode}: {result.stderr.strip()}"
    log.info("requeued SLURM job %s", job)
    return None


def rng_states() -> dict[str, Any]:
    """This process's torch (CPU and initialised CUDA), numpy and python RNG states."""
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        # plain values: Lightning reads checkpoints with torch.load(weights_only=True)
        "numpy": _plain_numpy_state(np.random.get_state()),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _plain_numpy_state(state: tuple) -> tuple:
    kind, keys, position, has_gauss, cached = state
    return (str(kind), [int(k) for k in keys], int(position), int(has_gauss), float(cached))


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    kind, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class LastCheckpoint(Checkpoint):
    """Keep ``<dirpath>/last.ckpt`` resumable; save and stop on a signal (see the module docstring).

    Args:
        dirpath: the run's checkpoint folder.
        every_n_steps: save every this many optimizer steps (None: not by step count).
        every_n_minutes: save when this many minutes passed since the last save (None: not by time;
            rank zero's clock decides for every rank).
        warning_signal: the signal a scheduler sends before a time limit or a preemption (submitit's
            sbatch asks SLURM for SIGUSR2); None: only SIGTERM / SIGINT stop the run.
        requeue: on ``warning_signal`` inside a SLURM job, requeue the job after saving.
    """

    def __init__(
        self,
        dirpath: str | Path,
        every_n_steps: int | None = None,
        every_n_minutes: float | None = None,
        warning_signal: str | int | None = "SIGUSR2",
        requeue: bool = True,
    ) -> None:
        super().__init__()
        if every_n_steps is not None and (not isinstance(every_n_steps, int) or every_n_steps <= 0):
            raise ValueError(f"every_n_steps={every_n_steps!r}: expected a positive integer or null")
        if every_n_minutes is not None and not every_n_minutes > 0:
            raise ValueError(f"every_n_minutes={every_n_minutes!r}: expected a positive number or null")
        self.path = Path(dirpath) / LAST_CHECKPOINT
        self.every_n_steps, self.every_n_minutes = every_n_steps, every_n_minutes
        self.warning_signal = signal_number(warning_signal) if warning_signal is not None else None
        self.requeue = requeue
        self._received: int = 0  # the first signal number, set by the handler
        self._requested: int = 0  # the signal every rank agreed on
        self._pending = False  # a save is due at the next point where it resumes exactly
        self._after_validation = False  # ... which is the end of the validation that follows
        self._stop_before_next_batch = False
        self._saved_step = -1
        self._last_save_time = time.monotonic()
        self._rng_to_restore: dict[str, Any] | None = None

    # ----------------------------------------------------------------------------------------------
    # Signals
    # ----------------------------------------------------------------------------------------------

    @property
    def signals(self) -> tuple[signal.Signals, ...]:
        extra = (self.warning_signal,) if self.warning_signal is not None else ()
        return tuple(dict.fromkeys((signal.SIGTERM, signal.SIGINT, *extra)))

    @contextmanager
    def handling_signals(self) -> Iterator[None]:
        """Install the stop handlers for the ``with`` body (fit and test); restore the previous ones."""
        previous = {signum: signal.signal(signum, self._on_signal) for signum in self.signals}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if not self._received:
            self._received = signum
        elif signum == signal.SIGINT and self._received == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without a checkpoint

    def _agree(self, trainer: pl.Trainer, *, time_due: bool = False) -> bool:
        """Share the received signal (and rank zero's time-based save) across ranks; True if a save is due."""
        flags = [self._received, int(time_due and trainer.is_global_zero)]
        if world_size() > 1:
            tensor = torch.tensor(flags, dtype=torch.int64, device=trainer.strategy.root_device)
            dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
            flags = [int(v) for v in tensor.tolist()]
        if flags[0] and not self._requested:
            self._requested = flags[0]
            rank_zero = trainer.is_global_zero
            if rank_zero:
                name = signal.Signals(flags[0]).name
                log.warning(
                    "%s received: saving %s at the next batch boundary, then stopping", name, self.path
                )
        return bool(flags[1])

    # ----------------------------------------------------------------------------------------------
    # When to save
    # ----------------------------------------------------------------------------------------------

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # after the loaders' iterators were created (each draws a seed from the global RNG)
        if self._rng_to_restore is not None:
            set_rng_states(self._rng_to_restore)
            self._rng_to_restore = None
        self._last_save_time = time.monotonic()

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int
    ) -> None:
        if self._stop_before_next_batch:
            self._stop(trainer)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        minutes = self.every_n_minutes
        time_due = minutes is not None and time.monotonic() - self._last_save_time >= 60 * minutes
        time_due = self._agree(trainer, time_due=time_due)
        step = trainer.global_step
        by_count = (
            self.every_n_steps is not None and step % self.every_n_steps == 0 and step != self._saved_step
        )
        self._pending = self._pending or bool(self._requested) or time_due or by_count
        if not self._pending or 0 < trainer.max_steps <= step:
            return  # nothing due, or the fit ends here and on_train_end saves
        epoch_loop = trainer.fit_loop.epoch_loop
        if epoch_loop.batch_progress.is_last_batch and trainer.num_training_batches > 1:
            return  # the next epoch's order is not drawn yet: save after its first batch
        # Lightning skips a due validation when it resumes from a checkpoint of this point
        if epoch_loop._should_check_val_fx(trainer.fit_loop._data_fetcher):
            self._after_validation = True
            return
        self._save(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # after the selecting ModelCheckpoint (Lightning runs checkpoint callbacks last, in order)
        if self._after_validation and not trainer.sanity_checking:
            self._after_validation = False
            self._save(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step != self._saved_step:
            self._save(trainer, stop=False)

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # a signal after the fit: last.ckpt holds the finished fit; a resume only tests
        self._agree(trainer)
        if self._requested:
            self._stop(trainer)

    def _save(self, trainer: pl.Trainer, *, stop: bool = True) -> None:
        started = time.monotonic()
        trainer.save_checkpoint(self.path, weights_only=False)
        self._saved_step, self._last_save_time, self._pending = trainer.global_step, time.monotonic(), False
        if trainer.is_global_zero:
            elapsed = self._last_save_time - started
            log.info("saved %s at step %d (%.2f s)", self.path, trainer.global_step, elapsed)
        if stop and self._requested:
            self._stop_before_next_batch = True

    def _stop(self, trainer: pl.Trainer) -> None:
        signum = self._requested
        record: dict[str, Any] = {
            "signal": signal.Signals(signum).name,
            "global_step": trainer.global_step,
            "last_checkpoint": str(self.path) if self.path.is_file() else None,
        }
        status = "interrupted"
        if signum == self.warning_signal and self.requeue and in_slurm_job():
            error = requeue_slurm_job() if trainer.is_global_zero else None
            status = "preempted" if error is None else "interrupted"
            record["requeue_error"] = error
        raise Interrupted(signum, status=status, record=record)

    # ----------------------------------------------------------------------------------------------
    # What is saved besides Lightning's state
    # ----------------------------------------------------------------------------------------------

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict
    ) -> None:
        checkpoint[RNG_KEY] = gather_objects([rng_states()])  # one entry per rank

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict
    ) -> None:
        states = checkpoint.get(RNG_KEY)
        if states is None:
            return  # an older checkpoint: the RNG continues from this run's seed
        if len(states) != world_size():
            raise ValueError(
                f"{trainer.ckpt_path}: written by a run on {len(states)} processes, this run has "
                f"{world_size()}; resume on as many (trainer.devices × trainer.num_nodes)"
            )
        self._rng_to_restore = states[trainer.global_rank]
