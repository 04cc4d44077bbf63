"""Preemption on a real SLURM cluster: the warning signal saves, requeues, and the job resumes by itself.

A sweep of two identical jobs goes through ``hydra/launcher=slurm``; job 0 is sent SIGUSR2 (what
submitit's sbatch asks SLURM to send before a time limit) twice, job 1 runs uninterrupted. Job 0
must end with job 1's step count, CSV log and test metrics, bit for bit.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
import uuid
from functools import partial
from pathlib import Path

import pytest

from conftest import requires_slurm

BIN = Path(sys.executable).parent

#: 48 samples in batches of 4: 12 steps per epoch, 40 steps in all, validation every 10
TINY = [
    "data.sizes={train:48,val:8,test:8}",
    "data.batch_size=4",
    "data.eval_batch_size=8",
    "trainer.max_steps=40",
    "trainer.val_check_interval=10",
    "trainer.log_every_n_steps=1",
    "logger=csv",
    "shuffled_sentence_test=false",
    "trivial_baselines=false",
    "callbacks.progress_bar.every_n_steps=1",
    "callbacks.last_checkpoint.every_n_minutes=null",
]


def wait_for(condition, what: str, timeout: float = 300, launcher: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if launcher is not None and launcher.poll() is not None:
            raise AssertionError(f"the launcher exited ({launcher.returncode}) while waiting for {what}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def status(run: Path) -> dict:
    try:
        return json.loads((run / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def progress_steps(run: Path) -> list[int]:
    """The step of every progress line in the run's log (``step N/40 …``)."""
    try:
        lines = (run / "train.log").read_text().splitlines()
    except OSError:
        return []
    return [int(line.split(" - step ")[1].split("/")[0]) for line in lines if " - step " in line]


def first_job(sweep: Path) -> str | None:
    """The SLURM id of sweep job 0 (an array task: ``<array id>_0``), from submitit's folder."""
    return next((p.name for p in (sweep / ".submitit").glob("*_0")), None)


def trained_to(run: Path, step: int) -> bool:
    return max(progress_steps(run), default=0) >= step


def status_is(run: Path, states: tuple[str, ...], restarts: int) -> dict | None:
    record = status(run)
    return record if record.get("status") in states and record.get("restarts") == restarts else None


def scontrol_start_now(job: str) -> bool:
    """Make the requeued job eligible now (SLURM delays a requeued job by about two minutes)."""
    state = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True).stdout
    if "RUNNING" in state:
        return True
    result = subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], capture_output=True)
    return result.returncode == 0 and "PENDING" in state


def csv_rows(run: Path) -> list[dict]:
    with (run / "csv" / "metrics.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


@requires_slurm
@pytest.mark.slow
def test_warning_signal_requeues_and_the_job_resumes_bit_identically(tmp_path, slurm_cluster):
    sweep, name = tmp_path / "sweep", f"rsrefseg-test-preemption-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    command = [
        str(BIN / "rsrefseg-train"),
        "-m",
        "hydra/launcher=slurm",
        f"hydra.sweep.dir={sweep}",
        f"hydra.launcher.partition={slurm_cluster}",
        f"hydra.launcher.name={name}",
        "hydra.launcher.timeout_min=15",
        "seed=42,42",  # two identical jobs: 0 is preempted, 1 is the reference
        *TINY,
    ]
    launcher = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    run = sweep / "0"
    try:
        job = wait_for(partial(first_job, sweep), "job 0", launcher=launcher)
        for restarts in (0, 1):
            # the signal once the job (or its resumed run) has trained a few steps
            after = max(progress_steps(run), default=0) + (3 if restarts == 0 else 1)
            wait_for(partial(trained_to, run, after), f"step {after}", launcher=launcher)
            subprocess.run(["scancel", "--signal=USR2", job], check=True)
            preempted = wait_for(
                partial(status_is, run, ("preempted",), restarts),
                "the job to requeue itself",
                launcher=launcher,
            )
            assert preempted["signal"] == "SIGUSR2" and preempted["requeue_error"] is None
            assert preempted["last_checkpoint"] == str(run / "checkpoints" / "last.ckpt")
            wait_for(partial(scontrol_start_now, job), "the requeued job to start", launcher=launcher)
            # the last resumed run may finish before this looks
            started = partial(status_is, run, ("running", "completed"), restarts + 1)
            resumed = wait_for(started, "the restart")
            assert resumed["resumed_from"] == str(run / "checkpoints" / "last.ckpt")  # no ckpt_path typed
        output, _ = launcher.communicate(timeout=600)
    finally:
        if launcher.poll() is None:
            launcher.kill()
        subprocess.run(["scancel", f"--name={name}"], check=False)
    # the launching process got both jobs' results
    assert launcher.returncode == 0, output[-3000:]

    reference = sweep / "1"
    final = status(run)
    assert final["status"] == "completed" and final["restarts"] == 2
    ours, theirs = (json.loads((r / "metrics.json").read_text()) for r in (run, reference))
    assert ours["global_step"] == theirs["global_step"] == 40
    assert ours["metrics"]["test"] == theirs["metrics"]["test"]  # bit-identical on CPU
    assert Path(ours["best_checkpoint"]).name == Path(theirs["best_checkpoint"]).name
    # the same losses at every step, hence the same samples in the same order; the same validations
    assert csv_rows(run) == csv_rows(reference)
