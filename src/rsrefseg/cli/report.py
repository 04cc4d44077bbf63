"""`rsrefseg-report`: what a composition costs — parameters by component, FLOPs, training-step memory.

    rsrefseg-report                                             # tiny backbones, on CPU
    rsrefseg-report model/clip=siglip2_so400m_512 model/sam=hiera_l model.finetune=lora batch_size=8

Parameters are counted as built (trainable / total, after the fine-tuning mode is applied);
forward FLOPs per image with ``torch.utils.flop_counter`` (multiply-add = 2 FLOPs) on one image
and one sentence; peak memory of one training step (forward, loss, backward, AdamW step) at
``batch_size`` after a warm-up step, so optimizer state is included: CUDA's allocator peak on a
GPU, the PyTorch memory profiler's live-tensor peak on CPU.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from rsrefseg.config.build import CONFIG_DIR
from rsrefseg.config.schema import check_config
from rsrefseg.errors import reports_errors, reports_job_errors
from rsrefseg.io import atomic_write_json
from rsrefseg.models import RSRefSeg2
from rsrefseg.models.cost import forward_flops, parameter_rows, train_step_peak_memory
from rsrefseg.process import prepare_process

log = logging.getLogger(__name__)

PROG = "rsrefseg-report"


def print_report(report: Mapping[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title=f"parameters — {report['composition']}")
    for column in ("component", "trainable", "total"):
        table.add_column(column, justify="left" if column == "component" else "right")
    for row in report["parameters"]:
        table.add_row(row["component"], f"{row['trainable'] / 1e6:.3f} M", f"{row['total'] / 1e6:.3f} M")
    console.print(table)
    lines = []
    if "flops" in report:
        lines += [f"flops/{k} {v / 1e9:.3f} GFLOPs" for k, v in report["flops"].items()]
    if "peak_memory_bytes" in report:
        lines.append(
            f"train_step_peak_memory {report['peak_memory_bytes'] / 2**20:.1f} MiB "
            f"(batch {report['batch_size']}, {report['device']}, {report['precision']})"
        )
    print("\n".join(lines))


def build_report(cfg: DictConfig) -> dict[str, Any]:
    """Build the composition and measure it; returns the report (also written as ``report.json``)."""
    prepare_process()
    torch.manual_seed(cfg.seed)
    if cfg.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(cfg.device)
    if cfg.precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {cfg.precision!r}")
    autocast = cfg.precision == "bf16"
    net: RSRefSeg2 = instantiate(cfg.model, _convert_="partial").to(device)
    loss = instantiate(cfg.loss).to(device)
    choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    composition = ", ".join(f"{k}={v}" for k, v in choices.items() if k.startswith("model/")) or "model"
    report: dict[str, Any] = {
        "composition": f"{composition}, finetune={cfg.model.finetune}",
        "device": str(device),
        "precision": cfg.precision,
        "batch_size": int(cfg.batch_size),
        "parameters": parameter_rows(net),
    }
    if cfg.flops:
        report["flops"] = forward_flops(net, device=device, autocast=autocast)
    if cfg.memory:
        report["peak_memory_bytes"] = train_step_peak_memory(
            net, loss, batch_size=int(cfg.batch_size), device=device, autocast=autocast
        )
    return report


@reports_errors(PROG)
@hydra.main(config_path=CONFIG_DIR, config_name="report", version_base="1.3")
@reports_job_errors(PROG)
def main(cfg: DictConfig) -> None:
    check_config(cfg)
    report = build_report(cfg)
    print_report(report)
    path = atomic_write_json(Path(cfg.paths.output_dir) / "report.json", report)
    log.info("report written to %s", path)


if __name__ == "__main__":
    main()
