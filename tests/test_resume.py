"""Interrupting and resuming a run: the train order, last.ckpt on a signal, resume in place, refusals."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from conftest import compose_config
from rsrefseg.config.build import build_datamodule
from rsrefseg.data.resumable_sampler import ResumableDistributedSampler, ResumableRandomSampler
from rsrefseg.errors import UserError
from rsrefseg.training.interruption import Interrupted, LastCheckpoint, signal_number
from rsrefseg.training.resume import (
    DECISION_ENV,
    RefuseFinishedRunFolder,
    Resume,
    check_same_config,
    resolve_resume,
)
from rsrefseg.training.status import STATUS_FILE, recorded_status

BIN = Path(sys.executable).parent

# --------------------------------------------------------------------------------------------------
# The train order
# --------------------------------------------------------------------------------------------------


def test_sampler_gives_random_samplers_order_under_the_same_global_seed():
    data = range(37)
    torch.manual_seed(5)
    # what DataLoader(shuffle=True) does: a RandomSampler drawing its seed from the global generator;
    # other draws in between (a loader iterator's base seed, augmentations) move that generator
    expected = []
    plain = RandomSampler(data)
    for _ in range(3):
        expected.append(list(plain))
        torch.rand(3)
    torch.manual_seed(5)
    ours = ResumableRandomSampler(data)
    for epoch in range(3):
        assert list(ours) == expected[epoch]
        torch.rand(3)


def test_train_loader_batches_are_the_shuffled_loaders_of_before():
    """The default run's numerics rest on this: the same sample ids in the same batches."""
    cfg = compose_config("train", ["data.sizes={train:64,val:8,test:8}"])
    datamodule = build_datamodule(cfg.data)
    dataset = datamodule.dataset("train")
    old = DataLoader(dataset, batch_size=16, shuffle=True, drop_last=True, collate_fn=lambda b: b)

    def ids(loader, epochs=2):
        return [[item["sample_id"] for item in batch] for _ in range(epochs) for batch in loader]

    pl.seed_everything(42)
    before = ids(old)
    pl.seed_everything(42)
    loader = datamodule.train_dataloader()
    assert isinstance(loader.sampler, ResumableRandomSampler)
    after = ids(
        DataLoader(dataset, batch_size=16, sampler=loader.sampler, drop_last=True, collate_fn=lambda b: b)
    )
    assert after == before and len(before) == 8


def test_sampler_continues_its_epoch_after_the_consumed_samples():
    data = range(20)
    torch.manual_seed(1)
    uninterrupted = ResumableRandomSampler(data)
    epoch = iter(uninterrupted)
    head = [next(epoch) for _ in range(8)]
    state = uninterrupted.state_dict(consumed=8)
    tail = list(epoch)

    resumed = ResumableRandomSampler(data)
    resumed.load_state_dict(state)
    assert list(resumed) == tail and sorted(head + tail) == list(data)
    # a finished epoch is not continued: the next one draws a new order
    finished = ResumableRandomSampler(data)
    finished.load_state_dict(uninterrupted.state_dict(consumed=20))
    assert finished._resume_at is None
    with pytest.raises(ValueError, match="had 20 samples and this run's has 21"):
        ResumableRandomSampler(range(21)).load_state_dict(state)


def test_distributed_sampler_gives_lightnings_order_and_resumes_per_rank():
    data = list(range(23))
    for rank in range(2):
        plain = DistributedSampler(data, num_replicas=2, rank=rank, shuffle=True, seed=42)
        ours = ResumableDistributedSampler(data, num_replicas=2, rank=rank, seed=42)
        for epoch in range(2):
            plain.set_epoch(epoch)
            ours.set_epoch(epoch)
            assert list(ours) == list(plain)
        resumed = ResumableDistributedSampler(data, num_replicas=2, rank=rank, seed=42)
        resumed.load_state_dict(ours.state_dict(consumed=5))
        resumed.set_epoch(1)
        assert list(resumed) == list(plain)[5:]
    with pytest.raises(ValueError, match="on 2 ranks and this run has 4"):
        ResumableDistributedSampler(data, num_replicas=4, rank=0, seed=42).load_state_dict(
            ours.state_dict(consumed=5)
        )


# --------------------------------------------------------------------------------------------------
# Which runs start, resume or are refused
# --------------------------------------------------------------------------------------------------


def write_status(folder: Path, status: str, **fields) -> None:
    (folder / STATUS_FILE).write_text(json.dumps({"status": status, **fields}))


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    for name in ("SLURM_RESTART_COUNT", "SLURM_JOB_ID", DECISION_ENV):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "checkpoints").mkdir()
    return tmp_path


def test_a_finished_run_is_never_written_into(run_dir):
    last = run_dir / "checkpoints" / "last.ckpt"
    last.write_bytes(b"x")
    write_status(run_dir, "completed")
    for ckpt_path in (None, "last", str(last)):
        with pytest.raises(UserError, match=f"{run_dir} holds a finished run .*never overwritten"):
            resolve_resume(ckpt_path, run_dir, last)
    write_status(run_dir, "interrupted")
    (run_dir / "metrics.json").write_text("{}")
    with pytest.raises(UserError, match=r"metrics\.json exists"):
        resolve_resume("last", run_dir, last)


def test_ckpt_path_last_resumes_in_place_or_names_what_it_looked_for(run_dir):
    last = run_dir / "checkpoints" / "last.ckpt"
    with pytest.raises(UserError, match=f"no resumable checkpoint at {last}.*holds no run"):
        resolve_resume("last", run_dir, last)
    write_status(run_dir, "interrupted", restarts=1)
    last.write_bytes(b"x")
    assert resolve_resume("last", run_dir, last) == Resume(str(last), in_place=True, restarts=2)
    # the run's own last.ckpt named as a file is the same resume
    assert resolve_resume(str(last), run_dir, last).in_place
    with pytest.raises(UserError, match=r"ckpt_path=nowhere\.ckpt: no such checkpoint file"):
        resolve_resume("nowhere.ckpt", run_dir, last)


def test_a_folder_holding_an_unfinished_run_is_resumed_or_refused(run_dir, monkeypatch):
    last = run_dir / "checkpoints" / "last.ckpt"
    assert resolve_resume(None, run_dir, last) == Resume()  # a fresh folder
    write_status(run_dir, "preempted")
    with pytest.raises(UserError, match=r"holds an earlier run .*'preempted'.*ckpt_path=last"):
        resolve_resume(None, run_dir, last)
    other = run_dir / "other.ckpt"
    other.write_bytes(b"x")
    with pytest.raises(UserError, match="holds an earlier run"):
        resolve_resume(str(other), run_dir, last)
    # a requeued SLURM job resumes by itself, from last.ckpt when there is one
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert resolve_resume(None, run_dir, last) == Resume(restarts=1)
    last.write_bytes(b"x")
    assert resolve_resume(None, run_dir, last) == Resume(str(last), in_place=True, restarts=1)


def test_other_ranks_follow_rank_zeros_decision(run_dir, monkeypatch):
    last = run_dir / "checkpoints" / "last.ckpt"
    last.write_bytes(b"x")
    write_status(run_dir, "interrupted")
    decided = resolve_resume("last", run_dir, last)
    assert json.loads(os.environ[DECISION_ENV])["ckpt_path"] == str(last)
    # a rank Lightning launched inherits the decision; a SLURM rank reads it from status.json
    assert resolve_resume("last", run_dir, last, rank_zero=False) == decided
    monkeypatch.delenv(DECISION_ENV)
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    write_status(run_dir, "running", attempt="slurm:77:0", resumed_from=str(last), restarts=1)
    assert resolve_resume("last", run_dir, last, rank_zero=False) == decided


def test_hydra_refuses_a_training_run_into_a_finished_runs_folder_before_writing(tmp_path, capsys):
    hydra_node = {"run": {"dir": str(tmp_path)}}
    RefuseFinishedRunFolder().on_run_start(OmegaConf.create({"task_name": "train", "hydra": hydra_node}))
    write_status(tmp_path, "completed")
    with pytest.raises(SystemExit) as stop:
        RefuseFinishedRunFolder().on_run_start(OmegaConf.create({"task_name": "train", "hydra": hydra_node}))
    assert stop.value.code == 1 and "holds a finished run" in capsys.readouterr().err
    # rsrefseg-eval writes metrics_<split>.json beside a run's results
    RefuseFinishedRunFolder().on_run_start(OmegaConf.create({"task_name": "eval", "hydra": hydra_node}))


def test_a_resume_with_another_configuration_is_refused(tmp_path):
    (tmp_path / "config_resolved.yaml").write_text("seed: 1\ntrainer: {max_steps: 40}\nckpt_path: null\n")
    check_same_config(tmp_path, {"seed": 1, "trainer": {"max_steps": 40}, "ckpt_path": "last"})
    with pytest.raises(UserError, match=r"trainer.max_steps: run 40, now 80.*config_resolved.yaml"):
        check_same_config(tmp_path, {"seed": 1, "trainer": {"max_steps": 80}, "ckpt_path": "last"})


def test_a_stop_on_a_signal_is_recorded_with_its_exit_status(tmp_path):
    stop = Interrupted(signal.SIGUSR2, status="preempted", record={"signal": "SIGUSR2", "global_step": 7})
    with pytest.raises(SystemExit) as raised, recorded_status(tmp_path, start={"restarts": 1}):
        raise stop
    assert raised.value.code == 128 + signal.SIGUSR2
    record = json.loads((tmp_path / STATUS_FILE).read_text())
    assert record["status"] == "preempted" and record["global_step"] == 7 and record["restarts"] == 1


def test_last_checkpoint_settings_are_checked():
    assert signal_number("USR1") == signal.SIGUSR1 and signal_number(15) == signal.SIGTERM
    with pytest.raises(ValueError, match="warning_signal='SIGFOO'"):
        LastCheckpoint("x", warning_signal="SIGFOO")
    with pytest.raises(ValueError, match="every_n_steps=0"):
        LastCheckpoint("x", every_n_steps=0)


# --------------------------------------------------------------------------------------------------
# End to end: SIGTERM mid-epoch, then ckpt_path=last
# --------------------------------------------------------------------------------------------------

#: 48 samples in batches of 4: 12 steps per epoch, 26 steps in all, validation every 8
TINY = [
    "data.sizes={train:48,val:8,test:8}",
    "data.batch_size=4",
    "data.eval_batch_size=8",
    "trainer.max_steps=26",
    "trainer.val_check_interval=8",
    "trainer.log_every_n_steps=1",
    "logger=csv",
    "shuffled_sentence_test=false",
    "trivial_baselines=false",
    "callbacks.progress_bar.every_n_steps=1",
    "callbacks.last_checkpoint.every_n_minutes=null",
]


def start(run: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    return subprocess.Popen(
        [str(BIN / "rsrefseg-train"), f"hydra.run.dir={run}", *TINY, *extra],
        cwd=run.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(process: subprocess.Popen, *, signal_at_step: int | None = None) -> tuple[int, str]:
    """Wait for the run; send SIGTERM once its progress line for ``signal_at_step`` appears."""
    lines = []
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line)
        if signal_at_step is not None and f"step {signal_at_step}/" in line:
            process.send_signal(signal.SIGTERM)
            signal_at_step = None
    return process.wait(timeout=600), "".join(lines)


def csv_rows(run: Path) -> list[dict]:
    with (run / "csv" / "metrics.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_sigterm_saves_stops_non_zero_and_resumes_in_place_bit_identically(tmp_path):
    uninterrupted, run = tmp_path / "uninterrupted", tmp_path / "run"
    reference = start(uninterrupted)  # in parallel: the machine has two cores
    code, output = finish(start(run), signal_at_step=5)  # mid-epoch, away from a validation
    assert code == 128 + signal.SIGTERM, output[-3000:]
    status = json.loads((run / STATUS_FILE).read_text())
    assert status["status"] == "interrupted" and status["signal"] == "SIGTERM"
    stopped_at = status["global_step"]
    assert 5 <= stopped_at < 12 and (run / "checkpoints" / "last.ckpt").is_file()
    assert f"saved {run / 'checkpoints' / 'last.ckpt'} at step {stopped_at}" in output
    assert finish(reference)[0] == 0

    code, output = finish(start(run, "ckpt_path=last"))
    assert code == 0, output[-3000:]
    assert "dataloader is not resumable" not in output  # Lightning's check cannot see our sampler's state
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "uninterrupted"]  # no new run folder
    ours, theirs = (json.loads((r / "metrics.json").read_text()) for r in (run, uninterrupted))
    assert ours["global_step"] == theirs["global_step"] == 26
    assert ours["metrics"]["test"] == theirs["metrics"]["test"]  # bit-identical on CPU
    # best-checkpoint tracking went on: the same step was selected, in this folder
    assert Path(ours["best_checkpoint"]).name == Path(theirs["best_checkpoint"]).name
    assert Path(ours["best_checkpoint"]).parent == run / "checkpoints"
    # every loss, learning rate and validation row: the same batches in the same order
    assert csv_rows(run) == csv_rows(uninterrupted)
    status = json.loads((run / STATUS_FILE).read_text())
    assert status["status"] == "completed" and status["restarts"] == 1

    # a finished run is never written into again, not even Hydra's record of its config
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    code, output = finish(start(run, "ckpt_path=last"))
    assert code == 1 and f"{run} holds a finished run" in output
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()} == before
