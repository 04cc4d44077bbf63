"""Referring-segmentation metrics: gIoU, cIoU, Pr@X, N-acc / T-acc and per-group IoU.

Every state is a sum, so accumulation across DDP ranks is exact (ΣI, ΣU, Σ IoU, counts) and
never a mean of per-rank means.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric


class ReferringSegmentationMetrics(Metric):
    """Accumulates per-sample intersection / union of boolean masks and reports them in percent.

    Outputs of :meth:`compute` (all percentages except the counts):

    - ``gIoU``: mean over samples of I/U (a.k.a. mIoU). I/U := 1 when U == 0 (empty target and
      empty prediction), unlike the release (NaN) and RMSIN (0).
    - ``cIoU``: ΣI / ΣU over all samples (a.k.a. oIoU); 100 when ΣU == 0.
    - ``Pr@X`` for each threshold X: share of samples with IoU > X (``inclusive=False``, the
      release) or IoU ≥ X (``inclusive=True``, the LAVT / RMSIN line).
    - ``N-acc`` / ``T-acc`` (GRES convention), only when at least one empty-target sample was seen:
      share of empty-target samples predicted empty / of non-empty-target samples predicted
      non-empty.
    - ``gIoU/<group>``, ``cIoU/<group>``, ``count/<group>`` for every group with ≥ 1 sample.
    - ``num_samples``.

    Before any update every percentage is NaN.

    Args:
        thresholds: IoU thresholds in [0, 1] for the precision metrics.
        inclusive: Count IoU == X as a hit for ``Pr@X``.
        group_names: Known group names (e.g. RRSIS-D categories); ``update`` rejects others.
        **kwargs: Forwarded to :class:`torchmetrics.Metric`.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        *,
        thresholds: Sequence[float] = (0.5, 0.6, 0.7, 0.8, 0.9),
        inclusive: bool = False,
        group_names: Sequence[str] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not all(0.0 <= x <= 1.0 for x in thresholds):
            raise ValueError(f"thresholds must lie in [0, 1], got {list(thresholds)}")
        if len(set(group_names)) != len(group_names):
            raise ValueError(f"group_names must be unique, got {list(group_names)}")
        self.thresholds = tuple(float(x) for x in thresholds)
        self.inclusive = inclusive
        self.group_names = tuple(group_names)
        self._group_index = {name: i for i, name in enumerate(self.group_names)}

        def add_sum_state(name: str, size: int | None, dtype: torch.dtype) -> None:
            default = torch.zeros(() if size is None else (size,), dtype=dtype)
            self.add_state(name, default=default, dist_reduce_fx="sum")

        num_groups = len(self.group_names)
        # Pixel counts and sample counts stay integral so ΣI/ΣU is exact at any dataset size.
        add_sum_state("intersection_sum", None, torch.int64)
        add_sum_state("union_sum", None, torch.int64)
        add_sum_state("iou_sum", None, torch.float64)
        add_sum_state("num_samples", None, torch.int64)
        add_sum_state("threshold_hits", len(self.thresholds), torch.int64)
        add_sum_state("empty_target_count", None, torch.int64)
        add_sum_state("empty_target_correct", None, torch.int64)
        add_sum_state("nonempty_target_correct", None, torch.int64)
        add_sum_state("group_iou_sum", num_groups, torch.float64)
        add_sum_state("group_intersection_sum", num_groups, torch.int64)
        add_sum_state("group_union_sum", num_groups, torch.int64)
        add_sum_state("group_count", num_groups, torch.int64)

    def update(
        self,
        preds: Sequence[Tensor] | Tensor,
        targets: Sequence[Tensor] | Tensor,
        groups: Sequence[str] | None = None,
        *,
        scores: dict[str, Tensor] | None = None,
    ) -> None:
        """Adds a batch of predictions.

        Args:
            preds: Boolean predicted masks, a B×H×W tensor or a sequence of B tensors of shape
                H_i×W_i (sizes may differ between samples, e.g. at original resolution).
            targets: Boolean ground-truth masks, same layout and per-sample shapes as ``preds``.
            groups: Optional group name per sample (length B), each one of ``group_names``.
            scores: this batch's :func:`sample_scores`, when the caller has them already (the
                pixels are then not counted a second time).

        Raises:
            ValueError: On a batch-size or per-sample shape mismatch, or an unknown group name.
            TypeError: If a mask is not boolean.
        """
        device = self.iou_sum.device
        scores = sample_scores(preds, targets) if scores is None else scores
        intersections, unions, iou = (scores[k].to(device) for k in ("intersection", "union", "iou"))
        pred_sizes, target_sizes = scores["pred_size"].to(device), scores["target_size"].to(device)
        batch_size = intersections.numel()
        # Validate the groups before touching any state so a bad batch leaves the metric unchanged.
        group_index = None if groups is None else self._group_indices(groups, batch_size, device)
        empty_target = target_sizes == 0

        self.intersection_sum += intersections.sum()
        self.union_sum += unions.sum()
        self.iou_sum += iou.sum()
        self.num_samples += batch_size
        thresholds = torch.tensor(self.thresholds, dtype=torch.float64, device=device)
        hits = iou[:, None] >= thresholds if self.inclusive else iou[:, None] > thresholds
        self.threshold_hits += hits.sum(dim=0)
        self.empty_target_count += empty_target.sum()
        self.empty_target_correct += (empty_target & (pred_sizes == 0)).sum()
        self.nonempty_target_correct += (~empty_target & (pred_sizes > 0)).sum()

        if group_index is None:
            return
        self.group_iou_sum.index_add_(0, group_index, iou)
        self.group_intersection_sum.index_add_(0, group_index, intersections)
        self.group_union_sum.index_add_(0, group_index, unions)
        self.group_count.index_add_(0, group_index, torch.ones_like(group_index))

    def _group_indices(self, groups: Sequence[str], batch_size: int, device: torch.device) -> Tensor:
        if len(groups) != batch_size:
            raise ValueError(f"groups has {len(groups)} entries for a batch of {batch_size} samples")
        unknown = sorted({g for g in groups if g not in self._group_index})
        if unknown:
            raise ValueError(f"unknown group name(s) {unknown}; known groups: {list(self.group_names)}")
        return torch.tensor([self._group_index[g] for g in groups], dtype=torch.int64, device=device)

    def compute(self) -> dict[str, Tensor]:
        """Returns the metrics described in the class docstring (float64 percentages)."""
        n = self.num_samples
        out: dict[str, Tensor] = {
            "gIoU": _percent(self.iou_sum, n),
            "cIoU": _ciou(self.intersection_sum, self.union_sum, n),
        }
        for x, hits in zip(self.thresholds, self.threshold_hits, strict=True):
            out[f"Pr@{x:g}"] = _percent(hits, n)
        if self.empty_target_count > 0:
            out["N-acc"] = _percent(self.empty_target_correct, self.empty_target_count)
            out["T-acc"] = _percent(self.nonempty_target_correct, n - self.empty_target_count)
        for i, name in enumerate(self.group_names):
            count = self.group_count[i]
            if count > 0:
                out[f"gIoU/{name}"] = _percent(self.group_iou_sum[i], count)
                out[f"cIoU/{name}"] = _ciou(self.group_intersection_sum[i], self.group_union_sum[i], count)
                out[f"count/{name}"] = count.clone()
        out["num_samples"] = n.clone()
        return out

    def merge_state(self, incoming_state: dict[str, Any] | Metric) -> None:
        """Merges another metric's sums into this one; refuses a differently configured metric."""
        if isinstance(incoming_state, ReferringSegmentationMetrics):
            mine = (self.thresholds, self.inclusive, self.group_names)
            theirs = (incoming_state.thresholds, incoming_state.inclusive, incoming_state.group_names)
            if mine != theirs:
                raise ValueError(f"cannot merge metrics configured as {theirs} into {mine}")
        super().merge_state(incoming_state)


def sample_scores(preds: Sequence[Tensor] | Tensor, targets: Sequence[Tensor] | Tensor) -> dict[str, Tensor]:
    """Per-sample scores with the metric's conventions (I/U := 1 when U == 0).

    Args:
        preds: B boolean predicted masks (a B×H×W tensor or B tensors H_i×W_i).
        targets: B boolean ground-truth masks of the same shapes.

    Returns:
        ``intersection``, ``union``, ``pred_size``, ``target_size`` (B int64 pixel counts) and
        ``iou`` (B float64 in [0, 1]).

    Raises:
        ValueError: On a batch-size or per-sample shape mismatch.
        TypeError: If a mask is not boolean.
    """
    device = preds.device if isinstance(preds, Tensor) else (preds[0].device if len(preds) else "cpu")
    intersections, unions, pred_sizes, target_sizes = _sample_statistics(
        preds, targets, torch.device(device)
    ).unbind(1)
    iou = torch.where(unions == 0, 1.0, intersections.double() / unions.clamp_min(1).double())
    return {
        "intersection": intersections,
        "union": unions,
        "pred_size": pred_sizes,
        "target_size": target_sizes,
        "iou": iou,
    }


def _as_sample_list(masks: Sequence[Tensor] | Tensor, name: str) -> Sequence[Tensor]:
    if isinstance(masks, Tensor) and masks.ndim != 3:
        raise ValueError(f"{name} as a tensor must be B×H×W, got shape {tuple(masks.shape)}")
    for mask in masks:
        if mask.dtype != torch.bool:
            raise TypeError(f"{name} must be boolean masks, got dtype {mask.dtype}")
    return masks


def _sample_statistics(
    preds: Sequence[Tensor] | Tensor, targets: Sequence[Tensor] | Tensor, device: torch.device
) -> Tensor:
    """Per-sample pixel counts, B×4 int64 on ``device``: columns I, U, |pred|, |target|."""
    preds = _as_sample_list(preds, "preds")
    targets = _as_sample_list(targets, "targets")
    if len(preds) != len(targets):
        raise ValueError(f"got {len(preds)} predictions but {len(targets)} targets")
    if isinstance(preds, Tensor) and isinstance(targets, Tensor) and preds.shape == targets.shape:
        # Fast path: one vectorised reduction for a same-size batch.
        pairs = [preds & targets, preds | targets, preds, targets]
        return torch.stack([m.flatten(1).sum(dim=1) for m in pairs], dim=1).long().to(device)
    rows = []
    for i, (pred, target) in enumerate(zip(preds, targets, strict=True)):
        if pred.ndim != 2 or pred.shape != target.shape:
            raise ValueError(
                f"sample {i}: prediction shape {tuple(pred.shape)} does not match target shape "
                f"{tuple(target.shape)} (expected two equal H×W shapes)"
            )
        pred, target = pred.to(device), target.to(device)
        rows.append(torch.stack([(pred & target).sum(), (pred | target).sum(), pred.sum(), target.sum()]))
    if not rows:
        return torch.zeros(0, 4, dtype=torch.int64, device=device)
    return torch.stack(rows).long()


def _percent(numerator: Tensor, denominator: Tensor) -> Tensor:
    """100 · numerator / denominator in float64; NaN when the denominator is 0."""
    if denominator == 0:
        return torch.tensor(float("nan"), dtype=torch.float64, device=numerator.device)
    return 100.0 * numerator.double() / denominator.double()


def _ciou(intersection: Tensor, union: Tensor, count: Tensor) -> Tensor:
    """ΣI/ΣU in percent, 100 when all samples were empty-target-and-prediction, NaN when count == 0."""
    if count == 0:
        return torch.tensor(float("nan"), dtype=torch.float64, device=intersection.device)
    if union == 0:
        return torch.tensor(100.0, dtype=torch.float64, device=intersection.device)
    return 100.0 * intersection.double() / union.double()
