"""`rsrefseg-report`: parameters by component, forward FLOPs and training-step peak memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import compose_config
from rsrefseg.report import build_report, print_report

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
    # the mask prompt is 4× larger too, the rest of the prompter is unchanged
    assert big["prompter"] > small["prompter"]


def test_peak_memory_holds_the_weights_and_grows_with_the_batch(capsys):
    one = build_report(compose_config("report", [*SMALL, "flops=false", "batch_size=1"]))
    four = build_report(compose_config("report", [*SMALL, "flops=false", "batch_size=4"]))
    trainable = next(r for r in one["parameters"] if r["component"] == "total")["trainable"]
    # weights + gradients + two AdamW moments, float32
    assert one["peak_memory_bytes"] > 4 * 4 * trainable
    assert four["peak_memory_bytes"] > one["peak_memory_bytes"] + 1e6
    print_report(four)
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
