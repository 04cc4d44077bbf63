"""What a network costs: parameters by component, forward FLOPs, peak memory of a training step.

Functions over an :class:`RSRefSeg2` and its loss (injected); ``rsrefseg-report`` prints them.
FLOPs come from ``torch.utils.flop_counter`` (multiply-add = 2 FLOPs) on one image and one
sentence; peak memory is CUDA's allocator peak on a GPU, the PyTorch memory profiler's live-tensor
peak on CPU, after a warm-up step so the optimizer state is included.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from rsrefseg.models.finetune import parameter_report
from rsrefseg.models.rsrefseg2 import RSRefSeg2

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
