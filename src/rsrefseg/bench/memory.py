"""Peak memory of one call: CUDA's allocator peak on a GPU, CPU allocations on a CPU.

On a GPU, ``torch.cuda.max_memory_allocated`` after a reset: everything the caching allocator hands
out during the call, the weights, gradients and optimizer state already there included. On a CPU,
the bytes already resident (``resident_bytes``: the weights, buffers, gradients and optimizer
state of the modules given) plus the peak growth of CPU tensor allocations during the call, from
the PyTorch profiler's memory events (allocations and frees in order). The process's RSS is not
used: it never shrinks, so a second measurement in one process would read the first one's peak.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

CUDA_METHOD = "torch.cuda.max_memory_allocated (weights, gradients, optimizer state included)"
CPU_METHOD = (
    "CPU: weights, buffers, gradients and optimizer state + peak growth of tensor allocations "
    "during the call (PyTorch profiler memory events)"
)


def memory_method(device: torch.device) -> str:
    """How :func:`peak_memory` measures on ``device`` (written to the report)."""
    return CUDA_METHOD if device.type == "cuda" else CPU_METHOD


def resident_bytes(modules: Iterable[nn.Module], optimizer: torch.optim.Optimizer | None = None) -> int:
    """Bytes of the modules' parameters, buffers and gradients and of the optimizer's state tensors."""
    seen: set[int] = set()
    total = 0

    def add(tensor: torch.Tensor | None) -> None:
        nonlocal total
        if tensor is not None and tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            total += tensor.numel() * tensor.element_size()

    for module in modules:
        for p in module.parameters():
            add(p)
            add(p.grad)
        for b in module.buffers():
            add(b)
    if optimizer is not None:
        for state in optimizer.state.values():
            for value in state.values():
                if isinstance(value, torch.Tensor):
                    add(value)
    return total


def cpu_allocation_growth(fn: Callable[[], Any]) -> int:
    """Peak of (CPU bytes allocated − freed) while ``fn()`` runs, from the profiler's memory events."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        if event.device_type() == torch.autograd.DeviceType.CPU:
            live += event.nbytes()
            peak = max(peak, live)
    return peak


def peak_memory(fn: Callable[[], Any], device: torch.device, resident: int = 0) -> int:
    """Peak bytes while ``fn()`` runs once (see the module docstring for what is counted).

    Args:
        fn: the call.
        device: where it runs.
        resident: on a CPU, the bytes alive before the call to add (:func:`resident_bytes`).
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device))
    return int(resident + cpu_allocation_growth(fn))
