"""Trivial predictors scored by the same metric code: the floor any model must clear."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from rsrefseg.metrics import ReferringSegmentationMetrics
from rsrefseg.scoring import Resolution, scoring_target


def trivial_baselines(
    samples: Iterable[Mapping[str, Any]],
    *,
    group_names: Sequence[str] = (),
    group_key: str | None = None,
    inclusive_pr: bool = False,
    resolution: Resolution = "original",
) -> dict[str, dict[str, float]]:
    """Score "all background" and "whole image" predictions on a split.

    Args:
        samples: dataset items with ``mask`` (1×S×S), optionally ``original_mask`` (H×W) and
            ``content_size``, and the group key.
        resolution: ``original`` or ``input`` (see :mod:`rsrefseg.scoring`); padding never counts.

    Returns:
        ``{"all_background": metrics, "whole_image": metrics}`` in percent.
    """
    makers = {"all_background": torch.zeros_like, "whole_image": torch.ones_like}
    metrics = {
        name: ReferringSegmentationMetrics(inclusive=inclusive_pr, group_names=tuple(group_names))
        for name in makers
    }
    for sample in samples:
        target = scoring_target(sample, resolution)
        groups = [sample[group_key]] if group_key else None
        for name, make in makers.items():
            metrics[name].update([make(target, dtype=torch.bool)], [target], groups)
    return {name: {k: float(v) for k, v in m.compute().items()} for name, m in metrics.items()}
