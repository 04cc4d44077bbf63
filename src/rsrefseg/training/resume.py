"""Which checkpoint a training job resumes from, and which run folders it may write into.

- ``ckpt_path=last`` resumes the run of this job's folder (``hydra.run.dir=<run>``) from its
  ``checkpoints/last.ckpt``, in place: same folder, best-checkpoint tracking and CSV log continued;
- ``ckpt_path=<run>/checkpoints/last.ckpt`` is the same when ``<run>`` is this job's folder; any
  other checkpoint file starts a new run in this folder from that file's state (a fork);
- ``ckpt_path=null`` in a requeued SLURM job (``SLURM_RESTART_COUNT`` > 0: preempted, or
  requeued after the warning signal before its time limit) resumes by itself from its folder's
  ``last.ckpt`` — a requeued job has no command line to add ``ckpt_path`` to.

A folder that holds a finished run (``status.json`` ``completed``, or ``metrics.json``) is never
written into; neither is one holding another unfinished run unless the job resumes it.

Every rank must take the same decision, though rank zero rewrites ``status.json`` as soon as it
has decided: it records the decision there (``resumed_from``, with the SLURM attempt that took it)
and in the environment of the ranks Lightning starts itself; the other ranks of a SLURM job read
it back, or take it from the same files when they are first.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from rsrefseg.errors import UserError, exit_with_report
from rsrefseg.training.status import STATUS_FILE

log = logging.getLogger(__name__)

RESULTS_FILE = "metrics.json"
#: the run's resolved config, written when it starts (rsrefseg.training.run)
CONFIG_FILE = "config_resolved.yaml"
#: settings a resume may change: how it resumes and how progress is saved or shown
RESUME_SETTINGS = ("ckpt_path", "callbacks.last_checkpoint", "callbacks.progress_bar")


@dataclass(frozen=True)
class Resume:
    """How a job starts.

    Attributes:
        ckpt_path: the checkpoint ``trainer.fit`` restores, or None for a fresh start.
        in_place: the job continues the run of its own folder (not a fork of another run).
        restarts: how many times this folder's run was started before.
    """

    ckpt_path: str | None = None
    in_place: bool = False
    restarts: int = 0


def read_status(output_dir: Path) -> dict[str, Any] | None:
    """The folder's ``status.json``, or None when it has none."""
    path = output_dir / STATUS_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise UserError(
            f"{path}: cannot read the run's status ({error}); expected the JSON rsrefseg-train writes"
        ) from error
    if not isinstance(record, dict):
        raise UserError(f"{path}: expected a JSON object with a 'status', got {type(record).__name__}")
    return record


def slurm_restart_count() -> int:
    """``SLURM_RESTART_COUNT``: how many times SLURM requeued this job (0 outside SLURM)."""
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
    except ValueError:
        return 0


def slurm_attempt() -> str | None:
    """``slurm:<job id>:<restart count>`` inside a SLURM job (the same for all its ranks), else None."""
    job = os.environ.get("SLURM_JOB_ID")
    return f"slurm:{job}:{slurm_restart_count()}" if job else None


#: rank zero's decision (JSON), inherited by the ranks Lightning launches as subprocesses
DECISION_ENV = "RSREFSEG_RESUME_DECISION"


def resolve_resume(
    ckpt_path: str | None, output_dir: Path, last_path: Path, *, rank_zero: bool = True
) -> Resume:
    """Decide how the job in ``output_dir`` starts (see the module docstring).

    Args:
        ckpt_path: the ``ckpt_path`` setting: None, ``last`` or a checkpoint file.
        output_dir: this job's run folder.
        last_path: where this run keeps its resumable checkpoint (``<output_dir>/checkpoints/last.ckpt``).
        rank_zero: whether this process is the global rank zero (which records the decision).

    Raises:
        UserError: the folder holds a finished run, or another run this job does not resume; the
            checkpoint asked for does not exist.
    """
    if not rank_zero:
        inherited = os.environ.get(DECISION_ENV)
        if inherited:
            return Resume(**json.loads(inherited))
    previous = read_status(output_dir)
    if not rank_zero and previous is not None and previous.get("attempt") == slurm_attempt() is not None:
        # rank zero of this very job got here first and recorded its decision
        return Resume(
            previous.get("resumed_from"), bool(previous.get("resumed_from")), previous.get("restarts", 0)
        )
    resume = _decide(ckpt_path, output_dir, last_path.expanduser().resolve(), previous)
    if rank_zero:
        os.environ[DECISION_ENV] = json.dumps(dataclasses.asdict(resume))
    return resume


def _decide(
    ckpt_path: str | None, output_dir: Path, own_last: Path, previous: dict[str, Any] | None
) -> Resume:
    _refuse_finished(output_dir, previous)
    restarts = int(previous.get("restarts", 0)) + 1 if previous else 0

    if ckpt_path == "last":
        if not own_last.is_file():
            raise UserError(
                f"ckpt_path=last: no resumable checkpoint at {own_last}. ckpt_path=last resumes the run "
                "whose folder is given as hydra.run.dir=<run folder>; that folder's checkpoints/last.ckpt is "
                "written every callbacks.last_checkpoint.every_n_steps / every_n_minutes and when the run "
                f"is stopped by a signal{_status_note(output_dir, previous)}"
            )
        return Resume(str(own_last), in_place=True, restarts=restarts)

    if ckpt_path is not None:
        path = Path(ckpt_path).expanduser()
        if not path.is_file():
            raise UserError(
                f"ckpt_path={ckpt_path}: no such checkpoint file ({path.resolve()}); give a file written by "
                "rsrefseg-train, or ckpt_path=last with hydra.run.dir=<run folder>"
            )
        if path.resolve() == own_last:
            return Resume(str(own_last), in_place=True, restarts=restarts)
        if previous is not None:
            raise _holds_a_run(output_dir, previous)
        return Resume(str(path.resolve()), in_place=False)

    if previous is None:
        return Resume()
    if slurm_restart_count() > 0:
        if own_last.is_file():
            log.info("requeued SLURM job: resuming the run of %s from %s", output_dir, own_last)
            return Resume(str(own_last), in_place=True, restarts=restarts)
        # requeued before its first save: nothing to resume, start this folder's run again
        log.warning("requeued SLURM job: no %s to resume from; starting the run again", own_last)
        return Resume(restarts=restarts)
    raise _holds_a_run(output_dir, previous)


class RefuseFinishedRunFolder(Callback):
    """Hydra callback: refuse a training run into a folder holding a finished run, before Hydra
    writes the job's ``.hydra/`` files (its config and overrides) over the finished run's."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.get("task_name") != "train":
            return
        folder = Path(str(config.hydra.run.dir)).expanduser().absolute()
        try:
            _refuse_finished(folder, read_status(folder))
        except UserError as error:
            # Hydra turns a callback's exception into a warning and goes on: exit here instead
            exit_with_report(Path(sys.argv[0]).name or "rsrefseg-train", error, debug=False)


def _refuse_finished(output_dir: Path, previous: Mapping[str, Any] | None) -> None:
    finished = _finished(output_dir, previous)
    if finished:
        raise UserError(
            f"{output_dir} holds a finished run ({finished}); a finished run is never overwritten. "
            "Train into a new folder (drop hydra.run.dir=…), or score its checkpoint with "
            f"rsrefseg-eval ckpt_path={output_dir}/checkpoints/best-step….ckpt"
        )


def _finished(output_dir: Path, previous: Mapping[str, Any] | None) -> str | None:
    if (output_dir / RESULTS_FILE).is_file():
        return f"{output_dir / RESULTS_FILE} exists"
    if previous is not None and previous.get("status") == "completed":
        return f"{output_dir / STATUS_FILE} says completed"
    return None


def _status_note(output_dir: Path, previous: Mapping[str, Any] | None) -> str:
    if previous is None:
        return f" ({output_dir} holds no run: no {STATUS_FILE})"
    return f" ({output_dir / STATUS_FILE} says {previous.get('status')!r})"


def _holds_a_run(output_dir: Path, previous: Mapping[str, Any]) -> UserError:
    return UserError(
        f"{output_dir} holds an earlier run ({output_dir / STATUS_FILE} says {previous.get('status')!r}); "
        "resume it with ckpt_path=last, or train into a new folder (drop hydra.run.dir=…)"
    )


def check_same_config(output_dir: Path, run_config: Mapping[str, Any]) -> None:
    """Refuse an in-place resume whose composed config differs from the run's (``config_resolved.yaml``).

    Only how the run resumes and shows progress may change (:data:`RESUME_SETTINGS`); anything
    else (data, model, steps, seed, devices) would silently continue another experiment.

    Raises:
        UserError: naming the differing keys and the stored config file.
    """
    path = output_dir / CONFIG_FILE
    if not path.is_file():
        return  # a run stopped before it wrote its config: nothing to compare with
    stored = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    theirs, ours = _flatten(stored), _flatten(run_config)
    absent = "(absent)"
    keys = sorted(
        k
        for k in theirs.keys() | ours.keys()
        if theirs.get(k, absent) != ours.get(k, absent)
        and not any(k == s or k.startswith(s + ".") for s in RESUME_SETTINGS)
    )
    if keys:
        lines = [f"{k}: run {theirs.get(k, absent)!r}, now {ours.get(k, absent)!r}" for k in keys[:8]]
        more = f"; … (+{len(keys) - 8} more)" if len(keys) > 8 else ""
        raise UserError(
            f"cannot resume the run of {output_dir} with another configuration: "
            + "; ".join(lines)
            + more
            + f". Give the run's own overrides again (its resolved config is {path})"
        )


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, Mapping):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out or {prefix[:-1]: {}}
    return {prefix[:-1]: node}


def logged_steps(ckpt_path: str) -> int:
    """The logger step a checkpoint stopped at: log rows up to it belong to the resumed run's past."""
    checkpoint = torch.load(ckpt_path, map_location="cpu", mmap=True, weights_only=False)
    epoch_loop = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.state_dict", {})
    return int(epoch_loop.get("_batches_that_stepped", 0))


def continue_csv_logs(loggers: list[Any], up_to_step: int) -> None:
    """Keep the CSV loggers' earlier rows (logger step ≤ ``up_to_step``) on an in-place resume.

    Lightning's CSV writer deletes an existing ``metrics.csv`` when it starts; rows logged after
    the checkpoint (a run killed between two saves) are logged again by the resumed run.
    """
    from pytorch_lightning.loggers import CSVLogger

    for logger in loggers:
        if not isinstance(logger, CSVLogger):
            continue
        path = Path(logger.log_dir) / "metrics.csv"
        if not path.is_file():
            continue
        with path.open(newline="") as handle:
            rows = [row for row in csv.DictReader(handle) if int(row["step"]) <= up_to_step]
        writer = logger.experiment  # starting the writer deletes the file
        writer.metrics = [{k: v for k, v in row.items() if v != ""} for row in rows] + writer.metrics
