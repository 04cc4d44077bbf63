"""Trivial predictors scored by the same metric code: the floor any model must clear."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from rsrefseg.metrics import ReferringSegmentationMetrics


def trivial_baselines(
    samples: Iterable[Mapping[str, Any]],
    *,
    group_names: Sequence[str] = (),
    group_key: str | None = None,
    inclusive_pr: bool = False,
) -> dict[str, dict[str, float]]:
    """Score "all background" and "whole image" predictions on a split.

    Args:
        samples: dataset items with ``mask`` (1×H×W) or ``original_mask`` (H×W), and the group key.

    Returns:
        ``{"all_background": metrics, "whole_image": metrics}`` in percent.
    """
    makers = {"all_background": torch.zeros_like, "whole_image": torch.ones_like}
    metrics = {
        name: ReferringSegmentationMetrics(inclusive=inclusive_pr, group_names=tuple(group_names))
        for name in makers
    }
    for sample in samples:
        target = sample.get("original_mask")
        target = (sample["mask"][0] > 0.5) if target is None else target.bool()
        groups = [sample[group_key]] if group_key else None
        for name, make in makers.items():
            metrics[name].update([make(target, dtype=torch.bool)], [target], groups)
    return {name: {k: float(v) for k, v in m.compute().items()} for name, m in metrics.items()}
