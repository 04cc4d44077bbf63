"""hydra/launcher=slurm on a real SLURM cluster: jobs run as srun tasks, one task per device, a failed job
is reported with its logs, and a 2-task gloo job reproduces trainer=ddp_sim."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import compose_config, requires_slurm
from hydra_plugins.rsrefseg_launchers import SlurmLauncher
from rsrefseg.errors import ConfigError

TRAIN = [sys.executable, "-m", "rsrefseg.cli.train"]
AGGREGATE = [sys.executable, "-m", "rsrefseg.cli.aggregate"]
TINY_JOB = ["data.sizes={train:64,val:8,test:8}", "logger=none"]


def _run(command: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _task_lines(sweep_dir: Path) -> list[str]:
    """The line each task prints first: its SLURM job, rank and task count (submitit's stdout logs)."""
    return sorted(
        line
        for log in (sweep_dir / ".submitit").glob("*/*_log.out")
        for line in log.read_text().splitlines()
        if line.startswith("rsrefseg: slurm job")
    )


@pytest.mark.slow  # two console-script runs (~12 s)
def test_devices_minus_one_is_refused_before_anything_is_submitted(tmp_path):
    """trainer=ddp's devices=-1 ("all GPUs") cannot size a request: a clear error, no SLURM needed."""
    done = _run(
        [*TRAIN, "-m", "trainer=ddp", "hydra/launcher=slurm", f"hydra.sweep.dir={tmp_path}/s"], tmp_path
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "trainer.devices=-1: hydra/launcher=slurm starts one task per device" in done.stderr
    assert "set trainer.devices=<devices per node>" in done.stderr
    assert not (tmp_path / "s" / ".submitit").exists()


def test_a_sweep_that_varies_the_job_layout_is_refused():
    """One sbatch request serves every job of a sweep, so the trainer's layout may not vary in it."""
    cfg = compose_config("train", ["hydra/launcher=slurm", "trainer=cpu"], hydra_node=True)
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    params.pop("_target_")
    launcher = SlurmLauncher(**params)
    launcher.config = cfg
    assert launcher.job_layout([["trainer=cpu", "seed=1"], ["trainer=cpu", "seed=2"]])["tasks_per_node"] == 1
    with pytest.raises(ConfigError, match="the sweep varies trainer: every job of a hydra/launcher=slurm"):
        launcher.job_layout([["trainer=cpu"], ["trainer=ddp_sim"]])


@requires_slurm
@pytest.mark.slow
def test_two_job_sweep_runs_under_srun_and_aggregates(tmp_path):
    sweep_dir = tmp_path / "sweep"
    done = _run(
        [*TRAIN, "-m", "hydra/launcher=slurm", "hydra.launcher.name=rsrefseg-test-sweep",
         f"hydra.sweep.dir={sweep_dir}", "model/prompter=cascaded,first_order", "trainer.max_steps=4",
         *TINY_JOB],
        tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    lines = _task_lines(sweep_dir)
    assert len(lines) == 2, lines
    for line in lines:  # each job is one srun task of its own SLURM job
        assert "task 0 of 1" in line and "SLURM_PROCID=0" in line and "SLURM_NTASKS=1" in line
        assert "SLURM_JOB_ID=" in line
    assert len({line.split("SLURM_JOB_ID=")[1].split()[0] for line in lines}) == 2
    for number in range(2):
        metrics = json.loads((sweep_dir / str(number) / "metrics.json").read_text())
        assert metrics["metrics"]["test"]["num_samples"] == 8

    aggregated = _run([*AGGREGATE, str(sweep_dir), "--reference", "model/prompter=cascaded"], tmp_path)
    assert aggregated.returncode == 0, aggregated.stderr[-3000:]
    with (sweep_dir / "aggregate" / "ablation.csv").open() as table:
        rows = list(csv.DictReader(table))
    assert len(rows) == 2
    assert any("first_order" in value for row in rows for value in row.values())


@requires_slurm
@pytest.mark.slow
def test_a_failed_job_is_reported_with_its_logs_and_the_other_job_finishes(tmp_path):
    sweep_dir = tmp_path / "sweep"
    done = _run(
        [*TRAIN, "-m", "hydra/launcher=slurm", "hydra.launcher.name=rsrefseg-test-failure",
         f"hydra.sweep.dir={sweep_dir}", "seed=oops,1", "trainer.max_steps=2", *TINY_JOB],
        tmp_path,
    )  # fmt: skip
    assert done.returncode == 1
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith("rsrefseg-train: error: 1 of 2 sweep jobs failed (the others' results are kept)")
    assert "#0 [seed=oops " in error and "seed='oops': expected an int" in error
    assert f"run folder {sweep_dir}/0" in error
    logs = error.split("logs ")[1].split(", ")
    stderr_log = Path(next(log for log in logs if log.endswith("_log.err")))
    assert stderr_log.is_file() and "seed='oops'" in stderr_log.read_text()  # with the job's traceback
    assert "Traceback" in stderr_log.read_text()
    assert (sweep_dir / "1" / "metrics.json").is_file()
    assert not (sweep_dir / "0" / "metrics.json").exists()


@requires_slurm
@pytest.mark.slow
def test_two_task_slurm_job_reproduces_ddp_sim(tmp_path):
    """trainer=ddp_sim: Lightning launches rank 1 itself; under SLURM both ranks are srun tasks (gloo)."""
    job = [*TINY_JOB, "trainer=ddp_sim", "trainer.max_steps=12", "seed=3"]
    direct = _run([*TRAIN, f"hydra.run.dir={tmp_path}/direct", *job], tmp_path)
    assert direct.returncode == 0, direct.stderr[-3000:]
    sweep_dir = tmp_path / "slurm"
    slurm = _run(
        [*TRAIN, "-m", "hydra/launcher=slurm", "hydra.launcher.name=rsrefseg-test-gloo",
         f"hydra.sweep.dir={sweep_dir}", *job],
        tmp_path,
    )  # fmt: skip
    assert slurm.returncode == 0, slurm.stderr[-3000:]
    lines = _task_lines(sweep_dir)
    assert [line.split(" on ")[0] for line in lines] == [
        f"rsrefseg: slurm job {lines[0].split()[3]} task {rank} of 2" for rank in range(2)
    ]
    assert all("SLURM_NTASKS=2" in line for line in lines)
    logs = "".join(log.read_text() for log in (sweep_dir / ".submitit").glob("*/*_log.err"))
    assert "distributed_backend=gloo" in logs and "MEMBER: 2/2" in logs

    direct_metrics = json.loads((tmp_path / "direct" / "metrics.json").read_text())["metrics"]
    slurm_metrics = json.loads((sweep_dir / "0" / "metrics.json").read_text())["metrics"]
    assert slurm_metrics["test"] == direct_metrics["test"]
    assert slurm_metrics["test"]["gIoU"] > 0
    direct_samples = (tmp_path / "direct" / "samples_test.csv").read_text()
    assert (sweep_dir / "0" / "samples_test.csv").read_text() == direct_samples
