"""The run folder's ``status.json``: whether a run is running, completed, failed or was interrupted.

Without it a failed or interrupted run looks like one still in progress. The file is rewritten
atomically at each change, by rank zero only:

- ``running``: with the process id, host and start time. A ``running`` run whose process is gone
  from that host was killed (SIGKILL, out of memory, a lost node), which no process can record;
- ``completed``: with the end time and the caller's summary (selected checkpoint, steps);
- ``failed``: with the error (``Type: message``) and its traceback;
- ``interrupted``: stopped by SIGTERM / SIGINT after saving ``last.ckpt`` (with the signal, the
  step and the checkpoint: :mod:`rsrefseg.training.interruption`), or any other ``SystemExit``;
- ``preempted``: stopped by the scheduler's warning signal and requeued; the requeued job writes
  ``running`` again with ``restarts`` counting the starts of this run folder and ``resumed_from``.
"""

from __future__ import annotations

import os
import socket
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rsrefseg.io import atomic_write_json

STATUS_FILE = "status.json"


def _now() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


@contextmanager
def recorded_status(
    output_dir: str | Path, *, enabled: bool = True, start: dict[str, Any] | None = None
) -> Iterator[dict[str, Any]]:
    """Record the run's status in ``output_dir/status.json`` around the ``with`` body.

    Args:
        output_dir: the run folder.
        enabled: write the file (rank zero only).
        start: fields recorded from the start (e.g. ``restarts``, ``resumed_from``).

    Yields:
        The record; fields the body adds to it (e.g. ``best_checkpoint``) are written on completion.
        The body's exception is re-raised after it is recorded.
    """
    path = Path(output_dir) / STATUS_FILE
    record: dict[str, Any] = {
        "status": "running",
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": _now(),
        "command": list(sys.argv),
        **(start or {}),
    }

    def write(**fields: Any) -> None:
        if enabled:
            record.update(fields)
            atomic_write_json(path, record)

    write()
    try:
        yield record
    except (KeyboardInterrupt, SystemExit) as stop:
        # a stop on a signal says how it stopped (rsrefseg.training.interruption.Interrupted)
        fields = getattr(stop, "record", {})
        status = getattr(stop, "status", "interrupted")
        write(status=status, finished=_now(), error=f"{type(stop).__name__}: {stop}", **fields)
        raise
    except BaseException as error:
        write(
            status="failed",
            finished=_now(),
            error=f"{type(error).__name__}: {error}",
            traceback=traceback.format_exc(),
        )
        raise
    write(status="completed", finished=_now())
