"""Process-wide settings every entry point applies first: numerics, and silence for what Lightning and
torch print that a user of this package cannot act on (each filter matches one known message exactly;
every other warning and log line is left as is). The Hugging Face hub mode is decided earlier, on
import (:mod:`rsrefseg.hub`).
"""

from __future__ import annotations

import logging
import os
import warnings

import torch

from rsrefseg.allocator import configure_cpu_allocator

_LOG_LINES = (
    # Lightning's advertising ("💡 Tip: … try installing litlogger / litmodels")
    "💡 Tip:",
    # said whenever an epoch-unit schedule asks for the run's length, which is the expected path
    "Loading `train_dataloader` to estimate number of stepping batches",
)
#: loggers Lightning's rank-zero messages go through (the fabric one when used without pytorch_lightning)
_RANK_ZERO_LOGGERS = ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero")
_WARNINGS = (
    # pytorch_lightning's own pytree helper trips torch's deprecation of LeafSpec: fixed upstream, not here
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    # data.num_workers is chosen per dataset in the data config (0 for the on-the-fly synthetic scenes)
    r"The '\w+' does not have many workers",
    # debug=overfit: Lightning fits the same batch in order, as asked
    r"You requested to overfit but enabled train dataloader shuffling",
    # a mid-epoch resume: the train order is resumable through the datamodule's state, which
    # Lightning's check (is the DataLoader itself stateful?) does not see
    r"You're resuming from a checkpoint that ended before the epoch ended and your dataloader is not",
)


class _DropLines(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_LOG_LINES)


def silence_unactionable_noise() -> None:
    """Install the filters (idempotent)."""
    # kineto, the profiler behind the CPU memory figure of rsrefseg-report, prints its start / stop
    # markers and, without a GPU, "gpuGetDeviceCount failed"; 6 is above its highest level. Read
    # when the profiler first starts, so setting it here (after torch's import) still counts.
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    for pattern in _WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in _RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropLines) for f in logger.filters):
            logger.addFilter(_DropLines())


def prepare_process() -> None:
    """Process-wide settings every entry point wants before building anything."""
    # Random-init training on CPU produces denormal floats that slow matmuls ~10×.
    torch.set_flush_denormal(True)
    torch.set_float32_matmul_precision("high")
    # keep freed CPU blocks for the next step instead of faulting them in again (rsrefseg.allocator)
    configure_cpu_allocator()
    silence_unactionable_noise()
    # The Hugging Face hub mode is not set here: huggingface_hub reads it once, at its import, so
    # the package decides it on import (rsrefseg.hub).
