"""Keep a new sweep out of an earlier sweep's folder (a Hydra callback; conf/hydra/default.yaml registers it).

Hydra numbers a sweep's jobs 0, 1, … inside ``hydra.sweep.dir``: a second sweep into the same folder
would overwrite the first one's ``0/metrics.json`` and leave its other jobs beside the new ones, so
that an aggregation mixes two sweeps. A multirun into a folder that already holds anything is
refused before any job starts; the message names the folder and the way out.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from rsrefseg.errors import UserError, exit_with_report


class SweepFolderInUse(UserError):
    """``hydra.sweep.dir`` already holds files (an earlier sweep's jobs)."""


def check_sweep_folder(sweep_dir: Path) -> None:
    """Raise :class:`SweepFolderInUse` when ``sweep_dir`` exists and is not empty.

    Args:
        sweep_dir: The multirun's ``hydra.sweep.dir``.
    """
    if not sweep_dir.is_dir():
        return
    entries = sorted(entry.name + ("/" if entry.is_dir() else "") for entry in sweep_dir.iterdir())
    if not entries:
        return
    shown = ", ".join(entries[:6]) + (", …" if len(entries) > 6 else "")
    raise SweepFolderInUse(
        f"hydra.sweep.dir={sweep_dir} already holds an earlier sweep ({shown}); a new sweep would overwrite "
        f"its jobs. Give this sweep its own folder (hydra.sweep.dir=<new folder>, or leave hydra.sweep.dir "
        f"unset for a timestamped one), or move {sweep_dir} away first"
    )


class RefuseUsedSweepFolder(Callback):
    """Refuse a multirun whose ``hydra.sweep.dir`` is not empty, before its sweeper writes anything."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            check_sweep_folder(Path(str(config.hydra.sweep.dir)))
        except SweepFolderInUse as error:
            # Hydra turns an exception of a callback into a warning and goes on: exit here instead
            exit_with_report(Path(sys.argv[0]).name or "rsrefseg", error, debug=False)
