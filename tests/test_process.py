"""Output a user cannot act on is filtered; only the exact known messages are."""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings

from rsrefseg.process import silence_unactionable_noise

PROFILE = """
import torch
from rsrefseg.process import silence_unactionable_noise
silence_unactionable_noise()
from torch.profiler import ProfilerActivity, profile
with profile(activities=[ProfilerActivity.CPU], profile_memory=True):
    (torch.ones(4, requires_grad=True) * 2).sum().backward()
print("profiled")
"""


def test_the_cpu_profiler_prints_no_gpu_error():
    """rsrefseg-report's CPU memory figure runs torch's profiler, whose kineto backend logs to stderr."""
    result = subprocess.run([sys.executable, "-c", PROFILE], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "profiled" in result.stdout, result.stderr[-2000:]
    assert "gpuGetDeviceCount" not in result.stderr and "profiler_start" not in result.stderr


def test_only_the_known_messages_are_filtered(caplog):
    silence_unactionable_noise()
    logger = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    with caplog.at_level(logging.INFO, logger=logger.name):
        logger.info("💡 Tip: For seamless cloud logging, try installing litlogger")
        logger.info("GPU available: False, used: False")
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False, used: False"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        silence_unactionable_noise()  # catch_warnings reset the filters
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use …", FutureWarning, stacklevel=1)
        warnings.warn("The 'train_dataloader' does not have many workers (bottleneck)", stacklevel=1)
        warnings.warn("The 'train_dataloader' has a real problem", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["The 'train_dataloader' has a real problem"]
