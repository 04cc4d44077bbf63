"""Model FLOPs utilisation: counted FLOPs per call / seconds per call / the device's peak FLOP/s.

The FLOPs are those ``torch.utils.flop_counter`` counts (multiply-add = 2 FLOPs), the counter
``rsrefseg-report`` uses. The peak is the device's dense bf16 tensor-core rate: built in for the
H100 and H200, settable for any device (``bench.peak_tflops``); a CPU has none built in, so its
MFU is null unless the user states a peak.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, by a substring of the CUDA device name.
#: The H200 is the H100 SXM's GH100 compute with more and faster memory: the same peak.
BUILTIN_PEAK_TFLOPS: dict[str, float] = {
    "H100": 989.4,
    "H200": 989.4,
}


@dataclass(frozen=True)
class Peak:
    """Attributes: flops_per_s (None: unknown), source (where it came from, for the report)."""

    flops_per_s: float | None
    source: str


def device_peak(device: torch.device, peak_tflops: float | None = None) -> Peak:
    """The peak FLOP/s MFU is relative to: the user's ``peak_tflops``, else a built-in one, else None."""
    if peak_tflops is not None:
        if peak_tflops <= 0:
            raise ValueError(f"bench.peak_tflops={peak_tflops} must be positive (TFLOP/s), or null")
        return Peak(float(peak_tflops) * 1e12, f"bench.peak_tflops={peak_tflops}")
    if device.type != "cuda":
        return Peak(None, f"none built in for {device.type}; set bench.peak_tflops")
    name = torch.cuda.get_device_name(device)
    return builtin_peak(name)


def builtin_peak(device_name: str) -> Peak:
    """The built-in bf16 dense peak of a CUDA device name, or None with the reason."""
    for key, tflops in BUILTIN_PEAK_TFLOPS.items():
        if key in device_name:
            return Peak(tflops * 1e12, f"built-in {key} bf16 dense ({tflops} TFLOP/s)")
    return Peak(None, f"none built in for {device_name!r}; set bench.peak_tflops")


def mfu(flops_per_call: float | None, seconds_per_call: float, peak: Peak) -> float | None:
    """``flops_per_call / seconds_per_call / peak`` as a fraction (0.35 = 35 %), None without a peak."""
    if flops_per_call is None or peak.flops_per_s is None:
        return None
    if seconds_per_call <= 0:
        raise ValueError(f"seconds per call must be positive, got {seconds_per_call}")
    return flops_per_call / seconds_per_call / peak.flops_per_s
