"""The C heap's settings for a CPU process: keep freed blocks for reuse instead of handing them back.

PyTorch's CPU tensors come from the C library's ``malloc``. glibc serves a large block (the 19 MB
gradient of CLIP's 49 408-token embedding, an activation map) from a fresh ``mmap`` and returns it
to the kernel on ``free`` (above 32 MB always; smaller blocks until its threshold has adapted), and
trims the top of its heap once enough there is free. A
training step frees and reallocates the same large blocks every time, so each step faults in its
memory page by page again: on the default run about 5 000 page faults per step, and in the
profiler the embedding gradient's zero-fill alone took 20–29 ms of the step (~5 ms with the blocks
kept). With the blocks kept, the next step reuses them. Numbers are unchanged: only where the
memory comes from differs.

The cost: memory freed after the peak stays with the process (its resident size stays at the peak
rather than shrinking), which is what a long training or prediction job does anyway.
``RSREFSEG_CPU_ALLOCATOR=system`` leaves the C library's defaults.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
from collections.abc import Callable

log = logging.getLogger(__name__)

ENV = "RSREFSEG_CPU_ALLOCATOR"
CHOICES = ("retain", "system")
# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
#: blocks below this come from the heap, which keeps them (older glibc caps it at 32 MB; tried next)
MMAP_THRESHOLDS = (1 << 30, 32 << 20)
#: free memory at the heap's top kept rather than trimmed
TRIM_THRESHOLD = (1 << 31) - 1
#: extra memory asked for whenever the heap grows, so that it grows rarely
TOP_PAD = 64 << 20

_applied: str | None = None


def configure_cpu_allocator(choice: str | None = None) -> str:
    """Apply ``choice`` (default: ``$RSREFSEG_CPU_ALLOCATOR``, else ``retain``) once per process.

    Returns:
        What is in effect: ``retain``, ``system``, or ``unavailable`` (not glibc: macOS, Windows,
        musl — the C library's own behaviour is kept).

    Raises:
        ValueError: a choice other than ``retain`` / ``system``, naming the variable.
    """
    global _applied
    choice = choice or os.environ.get(ENV) or "retain"
    if choice not in CHOICES:
        raise ValueError(f"{ENV}={choice!r}: expected one of {', '.join(CHOICES)}")
    if _applied is not None:
        return _applied
    if choice == "system":
        _applied = "system"
        return _applied
    mallopt = _glibc_mallopt()
    if mallopt is None:
        _applied = "unavailable"
        return _applied
    if not any(mallopt(_M_MMAP_THRESHOLD, size) for size in MMAP_THRESHOLDS):
        log.warning(
            "the C allocator refused the mmap thresholds %s; large blocks are still returned", MMAP_THRESHOLDS
        )
    if not (mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) and mallopt(_M_TOP_PAD, TOP_PAD)):
        log.warning("the C allocator refused its trim threshold or top pad; the heap's top is still trimmed")
    _applied = "retain"
    return _applied


def _glibc_mallopt() -> Callable[[int, int], int] | None:
    """glibc's ``mallopt``, or None where the C library is not glibc."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:  # no loadable C library by that name: leave the allocator alone
        return None
    if not hasattr(libc, "gnu_get_libc_version"):  # musl has a mallopt that ignores these settings
        return None
    mallopt = libc.mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return mallopt
