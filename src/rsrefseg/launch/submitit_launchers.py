"""Hydra launchers (``hydra/launcher=slurm`` / ``local``): each sweep job is one submitit job with one
process per device.

hydra-submitit-launcher's own launchers are kept for what they do well (pickling the Hydra job into
a submitit job, SLURM arrays); these subclasses add what a DDP sweep needs:

* the job layout comes from the trainer: ``trainer.devices`` tasks on each of ``trainer.num_nodes``
  nodes, GPUs requested only for a GPU trainer; a layout that cannot be requested (``devices=-1``,
  a sweep that varies the trainer's devices) is refused before anything is submitted;
* under SLURM every rank is an ``srun`` task and Lightning reads its rank from SLURM
  (``SLURMEnvironment``); on this machine the launcher exports the torch.distributed variables
  (``MASTER_ADDR`` / ``MASTER_PORT`` / ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``) so that Lightning
  takes the tasks as its ranks instead of spawning its own;
* a failed job does not hide the others: every job is waited for, and the failure report names each
  failed job's number, overrides, error and submitit log files (the upstream launcher raises the first
  failed job's error and stops collecting the rest).
"""

from __future__ import annotations

import logging
import os
import random
import socket
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides, run_job, setup_globals
from hydra_plugins.hydra_submitit_launcher import submitit_launcher as upstream
from omegaconf import DictConfig, open_dict

from rsrefseg.errors import ConfigError, UserError

log = logging.getLogger(__name__)

#: trainer keys that decide the job layout: one value per sweep (one sbatch request for all jobs)
LAYOUT_KEYS = ("trainer", "trainer.devices", "trainer.num_nodes", "trainer.accelerator")
#: accelerators whose devices are GPUs (the others request none)
GPU_ACCELERATORS = ("gpu", "cuda")


class SweepJobsFailed(UserError):
    """Some jobs of a sweep failed; the message names each one, its overrides, error and log files."""


class _DeviceTaskLauncher(upstream.BaseSubmititLauncher):
    """Launch each Hydra job as one submitit job with ``trainer.devices`` tasks per node.

    Args:
        max_parallel_jobs: How many jobs run at once (None: all; SLURM throttles with
            ``array_parallelism`` instead).
        **params: The ``hydra.launcher`` node (hydra-submitit-launcher's keys).
    """

    def __init__(self, max_parallel_jobs: int | None = None, **params: Any) -> None:
        super().__init__(**params)
        self.max_parallel_jobs = max_parallel_jobs

    # ---------------------------------------------------------------------------------------------
    # In the launching process
    # ---------------------------------------------------------------------------------------------

    def job_layout(self, job_overrides: Sequence[Sequence[str]]) -> dict[str, Any]:
        """The executor parameters, checked: a positive task count, GPUs only for a GPU trainer.

        Raises:
            ConfigError: ``trainer.devices`` is not a count, or the sweep varies the layout.
        """
        assert self.config is not None
        params = dict(self.params)
        tasks = params.get("tasks_per_node")
        if isinstance(tasks, bool) or not isinstance(tasks, int) or tasks < 1:
            raise ConfigError(
                f"trainer.devices={tasks!r}: hydra/launcher={self.option} starts one task per device and "
                "needs their number; set trainer.devices=<devices per node>, e.g. trainer.devices=4 "
                "(trainer=ddp's -1 means 'all GPUs of the machine', which a job request cannot say)"
            )
        nodes = params.get("nodes", 1)
        if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1:
            raise ConfigError(f"trainer.num_nodes={nodes!r}: expected a positive number of nodes")
        varied = [key for key in LAYOUT_KEYS if len({_override_value(o, key) for o in job_overrides}) > 1]
        if varied:
            raise ConfigError(
                f"the sweep varies {', '.join(varied)}: every job of a hydra/launcher={self.option} sweep "
                "has the same layout (one request for all jobs); run one sweep per trainer layout"
            )
        if params.get("gpus_per_node") is None:
            accelerator = str(self.config.trainer.get("accelerator", "cpu"))
            if accelerator not in (*GPU_ACCELERATORS, "cpu"):
                raise ConfigError(
                    f"trainer.accelerator={accelerator!r}: cannot tell how many GPUs to request; set "
                    "hydra.launcher.gpus_per_node=<GPUs per node> (or trainer.accelerator=gpu / cpu)"
                )
            params["gpus_per_node"] = tasks if accelerator in GPU_ACCELERATORS else None
        elif params["gpus_per_node"] == 0:
            params["gpus_per_node"] = None  # "no GPUs" is not asking for any
        return params

    @property
    def option(self) -> str:
        return "slurm" if self._EXECUTOR == "slurm" else "local"

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        """Submit every job, wait for all of them, and report the failed ones together."""
        import submitit

        assert self.config is not None
        assert len(job_overrides) > 0
        params = self.job_layout(job_overrides)
        init_keys = {"submitit_folder", "max_num_timeout"}
        init = {"folder": params["submitit_folder"]}
        if "max_num_timeout" in params:
            init[f"{self._EXECUTOR}_max_num_timeout"] = params["max_num_timeout"]
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init)
        generic = set(upstream.BaseQueueConf.__dataclass_fields__)
        executor.update_parameters(
            **{
                key if key in generic else f"{self._EXECUTOR}_{key}": value
                for key, value in params.items()
                if key not in init_keys and value is not None
            }
        )

        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info(
            "%s sweep of %d jobs in %s: %d node(s) × %d task(s) each",
            self.option,
            len(job_overrides),
            sweep_dir,
            params.get("nodes", 1),
            params["tasks_per_node"],
        )
        arguments = []
        for offset, overrides in enumerate(job_overrides):
            number = initial_job_idx + offset
            log.info("\t#%d : %s", number, " ".join(filter_overrides(overrides)))
            arguments.append(
                (list(overrides), "hydra.sweep.dir", number, f"job_id_for_{number}", Singleton.get_state())
            )

        window = self.max_parallel_jobs or len(arguments)
        returns: list[JobReturn] = []
        failures: list[str] = []
        for start in range(0, len(arguments), window):
            batch = arguments[start : start + window]
            jobs = executor.map_array(self, *zip(*batch, strict=True))
            for job, (overrides, _, number, _, _) in zip(jobs, batch, strict=True):
                job_return = _wait(job, overrides)
                returns.append(job_return)
                if job_return.status == JobStatus.FAILED:
                    failures.append(_describe_failure(job, job_return, number, overrides))
        if failures:
            summary = f"{len(failures)} of {len(returns)} sweep jobs failed (the others' results are kept)"
            log.error("%s:\n  %s", summary, "\n  ".join(failures))
            error = SweepJobsFailed(f"{summary}: {'; '.join(failures)}")
            for job_return in returns:
                if job_return.status == JobStatus.FAILED:
                    error.__cause__ = job_return._return_value
                    job_return.return_value = error
                    break
        return returns

    # ---------------------------------------------------------------------------------------------
    # In each task of a submitted job
    # ---------------------------------------------------------------------------------------------

    def __call__(
        self,
        sweep_overrides: list[str],
        job_dir_key: str,
        job_num: int,
        job_id: str,
        singleton_state: dict[type, Singleton],
    ) -> JobReturn:
        """Run the Hydra job in this task: one rank of the job's process group."""
        import submitit

        assert self.hydra_context is not None and self.config is not None and self.task_function is not None
        environment = submitit.JobEnvironment()
        rank, tasks = environment.global_rank, environment.num_tasks
        where = f"{self.option} job {environment.job_id} task {rank} of {tasks} on {socket.gethostname()}"
        print(
            f"rsrefseg: {where}"
            + "".join(f" {key}={os.environ[key]}" for key in SLURM_VARIABLES if key in os.environ),
            flush=True,
        )
        if self._EXECUTOR == "local" and tasks > 1:
            export_rank_environment(environment)

        Singleton.set_state(singleton_state)
        setup_globals()
        sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, sweep_overrides)
        with open_dict(sweep_config.hydra):
            sweep_config.hydra.job.id = environment.job_id
            sweep_config.hydra.job.num = job_num
            if rank > 0:
                # rank 0 writes the job's .hydra/ files; the same files written by every rank would race
                sweep_config.hydra.output_subdir = None
        job_return = run_job(
            hydra_context=self.hydra_context,
            task_function=self.task_function,
            config=sweep_config,
            job_dir_key=job_dir_key,
            job_subdir_key="hydra.sweep.subdir",
        )
        if job_return.status == JobStatus.FAILED:
            # Hydra keeps the exception for the launching process, which gets it without its traceback
            error = job_return._return_value
            print(f"rsrefseg: job #{job_num} failed on task {rank}:", file=sys.stderr)
            traceback.print_exception(type(error), error, error.__traceback__, file=sys.stderr)
            sys.stderr.flush()
        return job_return


#: what a task prints of its SLURM environment (the first line of its submitit log)
SLURM_VARIABLES = (
    "SLURM_JOB_ID",
    "SLURM_ARRAY_JOB_ID",
    "SLURM_PROCID",
    "SLURM_LOCALID",
    "SLURM_NTASKS",
    "SLURM_NNODES",
)


def export_rank_environment(environment: Any) -> None:
    """Let Lightning take this submitit task as one rank (its ``LightningEnvironment`` reads these).

    The port is drawn from the job id, so every task of the job agrees on it without talking.
    """
    from pytorch_lightning.utilities import rank_zero_only

    variables = {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(random.Random(environment.job_id).randint(20000, 60000)),
        "RANK": str(environment.global_rank),
        "WORLD_SIZE": str(environment.num_tasks),
        "LOCAL_RANK": str(environment.local_rank),
        "NODE_RANK": str(environment.node),
    }
    os.environ.update(variables)
    # read from the environment when Lightning was imported (to unpickle this job), before the export
    rank_zero_only.rank = environment.global_rank


def _override_value(overrides: Sequence[str], key: str) -> str | None:
    """The value a job's overrides give ``key`` (None: not overridden)."""
    for override in overrides:
        name, _, value = override.partition("=")
        if name.lstrip("+~") == key:
            return value
    return None


def _wait(job: Any, overrides: list[str]) -> JobReturn:
    """The job's rank-0 result; a job that died outside Hydra (killed, time limit) becomes a failure."""
    try:
        return job.results()[0]
    except Exception as error:  # submitit's FailedJobError / UncompletedJobError: the job never returned
        job_return = JobReturn(overrides=overrides, status=JobStatus.FAILED)
        job_return.return_value = error
        return job_return


def _describe_failure(job: Any, job_return: JobReturn, number: int, overrides: list[str]) -> str:
    """``#3 [model/prompter=no_dense seed=1] ValueError: …; run folder …; logs …``."""
    error = job_return._return_value
    message = " ".join(str(error).split()) or "(no message)"
    if len(message) > 300:
        message = message[:300] + "…"
    parts = [f"#{number} [{' '.join(filter_overrides(overrides))}] {type(error).__name__}: {message}"]
    hydra_cfg = job_return.hydra_cfg
    if isinstance(hydra_cfg, DictConfig) and "hydra" in hydra_cfg:
        parts.append(f"run folder {hydra_cfg.hydra.runtime.output_dir}")
    folder = Path(job.paths.folder)
    logs = sorted(str(path) for path in folder.glob(f"{job.job_id}_*_log.*")) or [
        str(job.paths.stderr),
        str(job.paths.stdout),
    ]
    parts.append(f"logs {', '.join(logs)}")
    return "; ".join(parts)


class SlurmLauncher(_DeviceTaskLauncher, upstream.SlurmLauncher):
    """``hydra/launcher=slurm``: one SLURM job per sweep job (an array), one ``srun`` task per device."""


class LocalLauncher(_DeviceTaskLauncher, upstream.LocalLauncher):
    """``hydra/launcher=local``: the same layout as processes on this machine."""
