"""The console scripts end to end on the tiny default: fast_dev_run, a short fit → eval, and overfitting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from conftest import compose_config
from rsrefseg.config.build import build_datamodule

BIN = Path(sys.executable).parent
SMALL = ["data.sizes.val=8", "data.sizes.test=8", "data.batch_size=4", "data.eval_batch_size=4"]


def run(script: str, *args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "disabled",
        "RSREFSEG_LOG_DIR": str(cwd / "logs"),
        **(env or {}),
    }
    result = subprocess.run(
        [str(BIN / script), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"{script} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


def test_fast_dev_run(tmp_path):
    result = run("rsrefseg-train", "debug=fdr", "logger=none", cwd=tmp_path)
    assert "test/gIoU " in result.stdout
    (run_dir,) = tmp_path.glob("logs/train/runs/*")
    payload = json.loads((run_dir / "metrics.json").read_text())
    assert set(payload["metrics"]) == {"test", "test_shuffled", "all_background", "whole_image"}
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
    assert not list(run_dir.rglob("*.ckpt"))  # a smoke test saves no weights
    # output a user cannot act on: Lightning's tips, a deprecation inside Lightning, redrawn bars
    output = result.stdout + result.stderr
    for noise in ("💡", "LeafSpec", "does not have many workers", "\r"):
        assert noise not in output, noise


def test_fit_select_test_then_eval_reproduces_the_selection(tmp_path):
    run(
        "rsrefseg-train",
        *SMALL,
        "logger=none",
        "trainer.max_steps=4",
        "trainer.val_check_interval=2",
        cwd=tmp_path,
    )
    (run_dir,) = tmp_path.glob("logs/train/runs/*")
    payload = json.loads((run_dir / "metrics.json").read_text())
    best = Path(payload["best_checkpoint"])
    assert best.is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "config_resolved.yaml").is_file() and (run_dir / "metrics.md").is_file()
    test = payload["metrics"]["test"]
    for key in ["gIoU", "cIoU", "Pr@0.5", "Pr@0.9", "gIoU/relation", "num_samples"]:
        assert key in test
    assert payload["metrics"]["all_background"]["gIoU"] == 0.0
    assert payload["scored_on"]["dataset"] == "synthetic" and payload["scored_on"]["split"] == "test"

    # no data=…: the checkpoint's own data config (its 8 val samples), recorded as such
    run("rsrefseg-eval", f"ckpt_path={best}", "split=val", cwd=tmp_path)
    (val,) = tmp_path.glob("logs/eval/runs/*/metrics_val.json")
    evaluated = json.loads(val.read_text())
    assert evaluated["metrics"]["val"]["gIoU"] == pytest.approx(payload["selection/val_gIoU"], abs=1e-4)
    assert evaluated["metrics"]["val"]["num_samples"] == 8
    assert evaluated["scored_on"] == {**payload["scored_on"], "split": "val", "data_config": "checkpoint"}
    status = json.loads((val.parent / "status.json").read_text())
    assert (status["status"], status["split"], status["checkpoint"]) == ("completed", "val", str(best))


def test_eval_names_a_missing_checkpoint(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", RSREFSEG_LOG_DIR=str(tmp_path / "logs"), HYDRA_FULL_ERROR="1")
    result = subprocess.run(
        [str(BIN / "rsrefseg-eval"), f"ckpt_path={tmp_path}/nope.ckpt"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "nope.ckpt" in result.stderr


def test_loss_falls_when_overfitting_one_batch():
    torch.manual_seed(0)
    cfg = compose_config("train")
    net = instantiate(cfg.model, _convert_="partial")
    loss_fn = instantiate(cfg.loss)
    datamodule = build_datamodule(cfg.data)
    batch = next(iter(datamodule.split_dataloader("val")))
    images, masks, sentences = batch["image"][:4], batch["mask"][:4], batch["sentence"][:4]
    params = [p for p in [*net.parameters(), *loss_fn.parameters()] if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    losses = []
    for _ in range(60):
        out = net(images, sentences)
        terms = loss_fn.for_output(out, masks)
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
        losses.append(float(terms["bce"].detach() + terms["dice"].detach()))
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.slow  # two processes (DDP / gloo): the slow set, which CI runs too
def test_ddp_on_two_cpu_processes(tmp_path):
    """trainer=ddp_sim: gloo DDP with 2 spawned processes — gathered contrastive negatives, summed metrics."""
    result = run(
        "rsrefseg-train",
        *SMALL,
        "logger=none",
        "trainer=ddp_sim",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        "shuffled_sentence_test=false",
        "trivial_baselines=false",
        "data.sizes.test=9",
        cwd=tmp_path,
    )
    (metrics,) = tmp_path.glob("logs/train/runs/*/metrics.json")
    test = json.loads(metrics.read_text())["metrics"]["test"]
    # 9 test samples sharded over 2 ranks without the sampler's padding repeat: each counted once
    assert test["num_samples"] == 9
    # the per-sample file gathers both ranks' shards, each sample once
    rows = (metrics.parent / "samples_test.csv").read_text().splitlines()[1:]
    assert len({row.split(",")[0] for row in rows}) == len(rows) == 9
    assert "test/gIoU " in result.stdout


@pytest.mark.slow  # two processes (DDP / gloo): the slow set, which CI runs too
def test_multirun_sweep_runs_each_job_in_its_own_folder(tmp_path):
    sweep_dir = tmp_path / "sweep"
    run(
        "rsrefseg-train",
        "-m",
        "debug=fdr",
        "logger=none",
        "model.prompter.depths=[1,1,1],[1,2,1]",
        f"hydra.sweep.dir={sweep_dir}",
        cwd=tmp_path,
    )
    jobs = sorted(sweep_dir.glob("*/metrics.json"))
    assert len(jobs) == 2
    depths = [(job.parent / "config_resolved.yaml").read_text() for job in jobs]
    assert "- 1\n    - 2\n    - 1" in depths[1] or "[1, 2, 1]" in depths[1]


def test_wandb_logger_offline_writes_a_finished_run(tmp_path):
    run(
        "rsrefseg-train",
        *SMALL,
        "logger=wandb",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        "shuffled_sentence_test=false",
        "trivial_baselines=false",
        cwd=tmp_path,
        env={"WANDB_MODE": "offline"},
    )
    (offline,) = tmp_path.glob("logs/train/runs/*/wandb/offline-run-*")
    assert list(offline.glob("*.wandb"))
