"""`rsrefseg-report`: parameters by component, forward FLOPs and training-step peak memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import compose_config
from rsrefseg.cli.report import build_report, print_report
from rsrefseg.models.cost import cpu_live_tensor_peak

BIN = Path(sys.executable).parent
# the tiny backbones with a small prompter keep each measurement to a few seconds on CPU
SMALL = ["model.prompter.internal_dim=64", "model.prompter.mlp_dim=64", "model.prompter.num_heads=2"]


def test_parameters_add_up_and_follow_the_finetune_mode():
    full = build_report(compose_config("report", [*SMALL, "flops=false", "memory=false"]))
    lora = build_report(
        compose_config("report", [*SMALL, "flops=false", "memory=false", "model.finetune=lora"])
    )
    rows = {r["component"]: r for r in full["parameters"]}
    assert set(rows) >= {
        "clip.vision",
        "clip.text",
        "prompter",
        "sam.image_encoder",
        "sam.mask_decoder",
        "total",
    }
    assert sum(r["total"] for name, r in rows.items() if name != "total") == rows["total"]["total"]
    lora_rows = {r["component"]: r for r in lora["parameters"]}
    # LoRA: the backbones' own weights freeze, a few adapter weights train; the prompter trains in both
    assert lora_rows["clip.vision"]["trainable"] < 0.2 * rows["clip.vision"]["trainable"]
    assert lora_rows["prompter"]["trainable"] == rows["prompter"]["trainable"] == rows["prompter"]["total"]


def test_flops_are_attributed_to_components_and_scale_with_the_sam_input():
    small = build_report(compose_config("report", [*SMALL, "memory=false"]))["flops"]
    big = build_report(
        compose_config(
            "report",
            [*SMALL, "memory=false", "model.sam.image_size=128", "model.sam.mask_size=128"],
        )
    )["flops"]
    assert small["total"] == small["clip"] + small["prompter"] + small["sam"] + small["other"]
    assert min(small["clip"], small["prompter"], small["sam"]) > 0
    # CLIP sees the same inputs; SAM works on 4× the pixels (its global attention grows faster than linearly)
    assert big["clip"] == small["clip"]
    assert 4.0 < big["sam"] / small["sam"] < 8.0


def test_cpu_live_tensor_peak_counts_a_known_workload():
    x, w = torch.randn(256, 1000), torch.randn(1000, 4000)
    # x (1.024 MB) and w (16 MB) exist before; x @ w (4.096 MB) is alive while its double (4.096 MB) is made
    peak = cpu_live_tensor_peak(lambda: (x @ w).mul(2).sum())
    assert peak == pytest.approx(4 * (256 * 1000 + 1000 * 4000 + 2 * 256 * 4000), rel=0.01)


def test_training_step_peak_holds_weights_gradients_and_adamw_state(capsys):
    report = build_report(compose_config("report", [*SMALL, "flops=false", "batch_size=1"]))
    trainable = next(r for r in report["parameters"] if r["component"] == "total")["trainable"]
    # float32 weights + gradients + two AdamW moments
    assert report["peak_memory_bytes"] > 4 * 4 * trainable
    print_report(report)
    assert "train_step_peak_memory" in capsys.readouterr().out


def test_report_command_prints_and_writes_json(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RSREFSEG_LOG_DIR": str(tmp_path / "logs")}
    result = subprocess.run(
        [str(BIN / "rsrefseg-report"), *SMALL, "memory=false"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "prompter" in result.stdout and "flops/total" in result.stdout
    (path,) = tmp_path.glob("logs/report/runs/*/report.json")
    report = json.loads(path.read_text())
    assert report["flops"]["total"] > 0 and report["parameters"][-1]["component"] == "total"
