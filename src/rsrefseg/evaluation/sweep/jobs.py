"""Read the jobs of a Hydra multirun folder: overrides, seed, status, metrics and log files.

A multirun folder holds ``multirun.yaml`` and one folder per job, named by Hydra's job number::

    <sweep>/multirun.yaml
    <sweep>/<num>/.hydra/{overrides,config,hydra}.yaml
    <sweep>/<num>/status.json  metrics.json  samples_test.csv  <task>.log
    <sweep>/.submitit/<job id>/*_log.{out,err}          (submitit launchers)
    <sweep>/optimization_results.yaml                     (hydra-optuna-sweeper)

A single run folder (``.hydra/`` directly inside) is read as a sweep of one job.

A job is *usable* when its ``status.json`` says ``completed`` (or it has none, as runs from
before ``status.json`` existed) and its ``metrics.json`` holds the split's metrics. Every other
job is kept with the reason, for the report's list of failed jobs.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from yaml import YAMLError

from rsrefseg.errors import UserError
from rsrefseg.evaluation.sweep.grid import ExpectedJob, GridUnknown, expected_jobs
from rsrefseg.evaluation.sweep.settings import SEED_KEY, seed_override

MULTIRUN_FILE = "multirun.yaml"
OPTUNA_RESULTS_FILE = "optimization_results.yaml"


@dataclass(frozen=True)
class Job:
    """One job folder of a sweep.

    Attributes:
        sweep: The multirun folder.
        path: The job folder (``<sweep>/<num>``).
        num: Hydra's job number.
        overrides: The job's task overrides (``.hydra/overrides.yaml``), as typed.
        seed: ``metrics.json``'s seed, else the ``seed=`` override, else ``seed`` in ``.hydra/config.yaml``.
        status: ``completed``, ``failed``, ``interrupted``, ``running`` (its process is alive or on
            another host), ``killed`` (``running`` but its process is gone from this host) or
            ``no status.json``.
        error: ``status.json``'s error, if any.
        metrics: The split's metrics from ``metrics.json`` (gIoU, cIoU, Pr@…, in percent), or None.
        logs: The job's log files: ``<num>/*.log`` and the submitit logs of its job id.
        problem: Why the job is not usable; None when it is.
    """

    sweep: Path
    path: Path
    num: int
    overrides: tuple[str, ...]
    seed: int | str | None
    status: str
    error: str | None
    metrics: Mapping[str, float] | None
    logs: tuple[Path, ...]
    problem: str | None

    @property
    def usable(self) -> bool:
        return self.problem is None

    def samples_file(self, split: str) -> Path:
        """The per-sample scores of ``split`` (``samples_<split>.csv``)."""
        return self.path / f"samples_{split}.csv"


@dataclass(frozen=True)
class MissingJob:
    """A job the sweep should have run that has no job folder.

    Attributes:
        seed: Its ``seed=`` override, else the sweep config's seed; None for an optuna trial.
    """

    sweep: Path
    num: int
    overrides: tuple[str, ...] | None
    seed: int | str | None
    logs: tuple[Path, ...]


@dataclass(frozen=True)
class Sweep:
    """A multirun folder and what it holds.

    Attributes:
        path: The folder.
        jobs: Every job folder, in job-number order.
        missing: Expected jobs without a folder (empty when ``expected_known`` is False).
        expected_known: Whether the sweep's jobs could be listed from ``multirun.yaml``.
        notes: What the reader should know (why missing jobs were not checked, optuna's best trial).
    """

    path: Path
    jobs: list[Job]
    missing: list[MissingJob]
    expected_known: bool
    notes: list[str] = field(default_factory=list)


def read_sweep(path: str | Path, *, split: str = "test", seed_key: str = SEED_KEY) -> Sweep:
    """Read every job of the multirun folder ``path`` (or the single run folder ``path``).

    Raises:
        UserError: When ``path`` is neither a multirun folder nor a run folder.
    """
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: no such folder (expected a Hydra multirun folder with {MULTIRUN_FILE})")
    if (path / ".hydra" / "overrides.yaml").is_file() and not (path / MULTIRUN_FILE).is_file():
        return Sweep(path, [read_job(path, path, num=0, split=split, seed_key=seed_key)], [], False)
    job_dirs = sorted(
        (p for p in path.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)
    )
    multirun_file = path / MULTIRUN_FILE
    if not multirun_file.is_file() and not job_dirs:
        raise UserError(
            f"{path}: not a Hydra multirun folder (no {MULTIRUN_FILE} and no job folders 0/, 1/, …)"
        )
    multirun = _load_yaml(multirun_file) if multirun_file.is_file() else {}
    jobs = [
        read_job(path, d, num=int(d.name), split=split, seed_key=seed_key, multirun=multirun)
        for d in job_dirs
    ]
    notes: list[str] = []
    missing: list[MissingJob] = []
    expected_known = False
    if not multirun:
        notes.append(f"{path}: no {MULTIRUN_FILE}, so missing jobs were not checked")
    else:
        try:
            expected = expected_jobs(multirun)
        except GridUnknown as reason:
            notes.append(f"{path}: missing jobs were not checked ({reason})")
        else:
            expected_known = True
            missing = _missing(path, expected, jobs, default_seed=_select(multirun, seed_key))
    notes += _optuna_notes(path, multirun)
    return Sweep(path, jobs, missing, expected_known, notes)


def read_job(
    sweep: Path,
    path: Path,
    *,
    num: int,
    split: str = "test",
    seed_key: str = SEED_KEY,
    multirun: Mapping[str, Any] | None = None,
) -> Job:
    """Read one job folder (see :class:`Job`)."""
    metrics_file = path / "metrics.json"
    payload = _load_json(metrics_file) if metrics_file.is_file() else None
    overrides = _job_overrides(path, payload)
    status, error = _status(path)
    metrics = None
    problem = None
    if overrides is None:  # a folder Hydra did not finish setting up, or not a Hydra job
        problem = "no .hydra/overrides.yaml"
    elif status not in ("completed", "no status.json"):
        problem = status
    elif payload is None:
        problem = f"{status}, no metrics.json"
    else:
        splits = payload.get("metrics") or {}
        if split not in splits:
            problem = f"metrics.json has no {split!r} metrics (it has: {', '.join(splits) or 'none'})"
        else:
            metrics = {str(k): float(v) for k, v in splits[split].items()}
    return Job(
        sweep=sweep,
        path=path,
        num=num,
        overrides=overrides or (),
        seed=_seed(path, payload, overrides or (), seed_key),
        status=status,
        error=error,
        metrics=metrics,
        logs=_logs(sweep, path, multirun or {}),
        problem=problem,
    )


def _job_overrides(path: Path, payload: Mapping[str, Any] | None) -> tuple[str, ...] | None:
    """``.hydra/overrides.yaml``, else metrics.json's ``overrides``; None when the job has neither."""
    file = path / ".hydra" / "overrides.yaml"
    if file.is_file():
        overrides = _load_yaml(file) or []
    elif payload is not None and "overrides" in payload:
        overrides = payload["overrides"]
    else:
        return None
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise UserError(f"{file}: expected a list of 'key=value' strings, got {overrides!r}")
    return tuple(overrides)


def _seed(
    path: Path, payload: Mapping[str, Any] | None, overrides: tuple[str, ...], seed_key: str
) -> int | str | None:
    if payload is not None and seed_key == SEED_KEY and payload.get("seed") is not None:
        return payload["seed"]
    config = path / ".hydra" / "config.yaml"
    default = _select(_load_yaml(config), seed_key) if config.is_file() else None
    return _typed_seed(overrides, default, seed_key)


def _typed_seed(overrides: tuple[str, ...], default: Any, seed_key: str = SEED_KEY) -> int | str | None:
    """The ``seed=`` override (an int when it is one), else ``default``."""
    typed = seed_override(overrides, seed_key=seed_key)
    if typed is None:
        return default
    return int(typed) if typed.lstrip("-").isdigit() else typed


def _select(config: Any, key: str) -> Any:
    """``config[a][b]`` for the dotted ``key`` ``a.b``; None when absent."""
    for part in key.split("."):
        config = config.get(part) if isinstance(config, Mapping) else None
    return config


def _status(path: Path) -> tuple[str, str | None]:
    file = path / "status.json"
    if not file.is_file():
        return "no status.json", None
    record = _load_json(file)
    status = str(record.get("status", "?"))
    error = record.get("error")
    if status == "running" and record.get("host") == socket.gethostname() and not _alive(record.get("pid")):
        # nothing records a SIGKILL or an out-of-memory kill: the process is simply gone
        return "killed", error or f"status.json says running but process {record.get('pid')} is gone"
    return status, error


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def _logs(sweep: Path, path: Path, multirun: Mapping[str, Any]) -> tuple[Path, ...]:
    logs = sorted(path.glob("*.log"))
    folder = _submitit_folder(sweep, path, multirun)
    if folder is not None and folder.is_dir():
        logs += sorted(folder.glob("*_log.out")) + sorted(folder.glob("*_log.err"))
    return tuple(logs)


def _submitit_folder(sweep: Path, path: Path, multirun: Mapping[str, Any]) -> Path | None:
    """The submitit log folder of a job: the launcher's ``submitit_folder`` with ``%j`` = the job id."""
    hydra_file = path / ".hydra" / "hydra.yaml"
    if not hydra_file.is_file():
        return None
    job_id = ((_load_yaml(hydra_file) or {}).get("hydra") or {}).get("job", {}).get("id")
    if job_id is None:
        return None
    launcher = (multirun.get("hydra") or {}).get("launcher") or {}
    template = str(launcher.get("submitit_folder", "${hydra.sweep.dir}/.submitit/%j"))
    template = template.replace("${hydra.sweep.dir}", str(sweep)).replace("%j", str(job_id))
    return Path(template) if "${" not in template else sweep / ".submitit" / str(job_id)


def _missing(
    sweep: Path, expected: list[ExpectedJob], jobs: list[Job], *, default_seed: Any
) -> list[MissingJob]:
    nums = {job.num for job in jobs}
    present = {frozenset(job.overrides) for job in jobs}
    submitit = sweep / ".submitit"
    logs = (submitit,) if submitit.is_dir() else ()
    missing = []
    for job in expected:
        found = job.num in nums if job.overrides is None else frozenset(job.overrides) in present
        if not found:
            seed = None if job.overrides is None else _typed_seed(job.overrides, default_seed)
            missing.append(MissingJob(sweep, job.num, job.overrides, seed, logs))
    return missing


def _optuna_notes(path: Path, multirun: Mapping[str, Any]) -> list[str]:
    target = str(((multirun.get("hydra") or {}).get("sweeper") or {}).get("_target_", ""))
    results = path / OPTUNA_RESULTS_FILE
    if "optuna" not in target and not results.is_file():
        return []
    if not results.is_file():
        return [f"{path}: optuna search without {OPTUNA_RESULTS_FILE} (it has not finished)"]
    best = _load_yaml(results) or {}
    if "best_params" in best:
        params = " ".join(f"{k}={v}" for k, v in best["best_params"].items())
        return [f"{path}: optuna's best trial: {params} (objective {best.get('best_value')})"]
    return [f"{path}: optuna's Pareto front has {len(best.get('solutions') or [])} solutions ({results})"]


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise UserError(f"{path}: not valid JSON ({error})") from error


def _load_yaml(path: Path) -> Any:
    """A YAML file as Hydra wrote and reads it (OmegaConf's loader: ``1e-4`` is a float), unresolved."""
    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except (YAMLError, OmegaConfBaseException) as error:
        raise UserError(f"{path}: not valid YAML ({error})") from error
