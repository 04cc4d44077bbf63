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
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from rsrefseg.build import CONFIG_DIR, prepare_process
from rsrefseg.io import atomic_write_json
from rsrefseg.models import RSRefSeg2, parameter_report

log = logging.getLogger(__name__)

SENTENCE = "the small gray vehicle left of the large building"


def parameter_rows(net: RSRefSeg2) -> list[dict[str, Any]]:
    """``{component, trainable, total}`` per component of :meth:`RSRefSeg2.components`, plus ``total``."""
    return [
        {"component": name, "trainable": trainable, "total": total}
        for name, trainable, total in parameter_report(net.components(), net)
    ]


def example_batch(net: RSRefSeg2, batch_size: int, device: torch.device) -> tuple[Tensor, list[str], Tensor]:
    """Random images at SAM's input size, the example sentence and random masks at that size."""
    size = net.sam.image_size
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batch_size, 3, size, size, generator=generator).to(device)
    masks = (torch.rand(batch_size, 1, size, size, generator=generator) > 0.5).float().to(device)
    return images, [SENTENCE] * batch_size, masks


def forward_flops(net: RSRefSeg2, *, device: torch.device, autocast: bool) -> dict[str, int]:
    """Forward FLOPs for one image and one sentence: ``total`` and per top-level part of the network."""
    images, sentences, _ = example_batch(net, 1, device)
    counter = FlopCounterMode(display=False, depth=2)
    net.eval()
    # grad stays enabled: the counter's module tracker hooks autograd and fails on no-grad outputs
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast), counter:
        net(images, sentences)
    counts = {k: sum(v.values()) for k, v in counter.get_flop_counts().items()}
    out = {"total": int(counter.get_total_flops())}
    root = type(net).__name__
    for name in ("clip", "prompter", "sam"):
        # backbones are entered through methods (encode_image, ...), so their own module key may be
        # absent: add up the outermost modules that were called under the component
        prefix = f"{root}.{name}"
        under = [k for k in counts if k == prefix or k.startswith(prefix + ".")]
        outermost = [k for k in under if not any(k.startswith(o + ".") for o in under if o != k)]
        out[name] = int(sum(counts[k] for k in outermost))
    out["other"] = out["total"] - sum(out[name] for name in ("clip", "prompter", "sam"))
    return out


def _train_step(
    net: RSRefSeg2, loss: nn.Module, optimizer: torch.optim.Optimizer, batch: tuple, autocast: bool
) -> None:
    images, sentences, masks = batch
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=autocast):
        terms = loss.for_output(net(images, sentences), masks)
    terms["loss"].backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def cpu_live_tensor_peak(fn: Any) -> int:
    """Peak bytes of live CPU tensors while ``fn()`` runs (tensors alive before it included).

    Uses the PyTorch profiler's memory timeline (the data behind ``export_memory_timeline``).
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(
        activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True
    ) as prof:
        fn()
    live = peak = 0
    for _, action, _, size in prof._memory_profile().timeline:
        name = action.name
        if name in ("PREEXISTING", "CREATE"):
            live += size
        elif name == "DESTROY":
            live -= size
        peak = max(peak, live)
    return peak


def train_step_peak_memory(
    net: RSRefSeg2, loss: nn.Module, *, batch_size: int, device: torch.device, autocast: bool
) -> int:
    """Peak bytes of one training step at ``batch_size`` (after a warm-up step that creates AdamW state)."""
    net.train()
    params = [p for p in [*net.parameters(), *loss.parameters()] if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-6)
    batch = example_batch(net, batch_size, device)
    _train_step(net, loss, optimizer, batch, autocast)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        _train_step(net, loss, optimizer, batch, autocast)
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device))
    return cpu_live_tensor_peak(lambda: _train_step(net, loss, optimizer, batch, autocast))


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


@hydra.main(config_path=CONFIG_DIR, config_name="report", version_base="1.3")
def main(cfg: DictConfig) -> None:
    report = build_report(cfg)
    print_report(report)
    path = atomic_write_json(Path(cfg.paths.output_dir) / "report.json", report)
    log.info("report written to %s", path)


if __name__ == "__main__":
    main()
