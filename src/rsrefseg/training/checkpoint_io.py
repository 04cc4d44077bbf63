"""Lightning's checkpoint IO, made atomic (kept apart from :mod:`rsrefseg.io`, which imports no torch)."""

from __future__ import annotations

from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from rsrefseg.io import atomic_open


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO that saves through a temporary file and an atomic rename."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"AtomicCheckpointIO takes no storage_options, got {storage_options!r}")
        with atomic_open(path) as handle:
            torch.save(checkpoint, handle)
