"""Time a call: warm-up calls excluded, several timed repeats, their median and spread.

On a GPU each repeat is bracketed by CUDA events after a synchronisation (the kernels a call queues
are timed, not just their launch); on a CPU by a wall clock (``time.perf_counter``, injectable so
that the statistics can be tested on a fake clock).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Timing:
    """Seconds per call over the timed repeats.

    Attributes:
        median_s: median seconds per call.
        iqr_s: interquartile range (inclusive quartiles) of the repeats, in seconds.
        spread: ``iqr_s / median_s``, the relative spread.
        min_s, max_s: fastest and slowest repeat.
        repeats: number of timed repeats.
        warmup_s: seconds of the warm-up calls together (compilation and allocator growth land here).
        clock: ``cuda_events`` or ``perf_counter``.
    """

    median_s: float
    iqr_s: float
    spread: float
    min_s: float
    max_s: float
    repeats: int
    warmup_s: float
    clock: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(seconds: Sequence[float], *, warmup_s: float = 0.0, clock: str = "perf_counter") -> Timing:
    """Median and spread of per-call times.

    Raises:
        ValueError: no times, or a time that is not positive.
    """
    if not seconds:
        raise ValueError("no timed repeats: bench.repeats must be at least 1")
    if min(seconds) <= 0:
        raise ValueError(f"non-positive call time among {list(seconds)}: the clock did not advance")
    median = statistics.median(seconds)
    if len(seconds) > 1:
        q1, _, q3 = statistics.quantiles(seconds, n=4, method="inclusive")
    else:
        q1 = q3 = seconds[0]
    return Timing(
        median_s=median,
        iqr_s=q3 - q1,
        spread=(q3 - q1) / median,
        min_s=min(seconds),
        max_s=max(seconds),
        repeats=len(seconds),
        warmup_s=warmup_s,
        clock=clock,
    )


def time_calls(
    fn: Callable[[], Any],
    *,
    warmup: int,
    repeats: int,
    device: torch.device,
    clock: Callable[[], float] = time.perf_counter,
) -> Timing:
    """Call ``fn`` ``warmup`` times untimed, then ``repeats`` times timed, one call per repeat.

    Args:
        fn: the work of one call (a forward, a training step, a batch of the loader).
        warmup: untimed calls first (at least 1 is advisable: lazy initialisation, compilation).
        repeats: timed calls.
        device: a CUDA device is timed with CUDA events; anything else with ``clock``.
        clock: seconds, monotonic (the CPU clock; tests pass a fake one).
    """
    if warmup < 0 or repeats < 1:
        raise ValueError(f"bench.warmup={warmup} must be >= 0 and bench.repeats={repeats} >= 1")
    cuda = device.type == "cuda"
    start = clock()
    for _ in range(warmup):
        fn()
    if cuda:
        torch.cuda.synchronize(device)
    warmup_s = clock() - start
    seconds = []
    for _ in range(repeats):
        if cuda:
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            begin.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            seconds.append(begin.elapsed_time(end) / 1000.0)
        else:
            before = clock()
            fn()
            seconds.append(clock() - before)
    return summarize(seconds, warmup_s=warmup_s, clock="cuda_events" if cuda else "perf_counter")
