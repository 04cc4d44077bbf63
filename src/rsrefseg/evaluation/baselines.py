"""Trivial predictors scored by the same metric code: the floor any model must clear.

They are scored inside the model's own test pass, on the very targets the model is scored
against (same resolution, padding cropped, same DDP shards), so the split is read once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

from rsrefseg.evaluation.metrics import ReferringSegmentationMetrics

#: name → prediction made from a target mask's shape
BASELINES: Mapping[str, Callable[..., Tensor]] = {
    "all_background": torch.zeros_like,
    "whole_image": torch.ones_like,
}


def update_baselines(
    metrics: Mapping[str, ReferringSegmentationMetrics],
    targets: Sequence[Tensor],
    groups: Sequence[str] | None = None,
) -> None:
    """Score every baseline of ``metrics`` (keyed like :data:`BASELINES`) on a batch's bool targets."""
    for name, metric in metrics.items():
        make = BASELINES[name]
        metric.update([make(t, dtype=torch.bool) for t in targets], targets, groups)
