"""Tests for ReferringSegmentationMetrics on hand-made masks with hand-computed values."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor

from conftest import run_on_two_gloo_ranks
from rsrefseg.evaluation.metrics import ReferringSegmentationMetrics


def _mask(shape: tuple[int, int], *pixels: tuple[int, int]) -> Tensor:
    mask = torch.zeros(shape, dtype=torch.bool)
    for r, c in pixels:
        mask[r, c] = True
    return mask


# 4×4 target of 4 pixels (top-left 2×2) and a prediction shifted one column: I = 2, U = 6.
TARGET_2X2 = _mask((4, 4), (0, 0), (0, 1), (1, 0), (1, 1))
PRED_SHIFTED = _mask((4, 4), (0, 1), (0, 2), (1, 1), (1, 2))
EMPTY = torch.zeros(4, 4, dtype=torch.bool)


def _single(pred: Tensor, target: Tensor, **kwargs: object) -> dict[str, Tensor]:
    metric = ReferringSegmentationMetrics(**kwargs)
    metric.update(pred[None], target[None])
    return metric.compute()


def test_single_sample_iou_by_hand() -> None:
    out = _single(PRED_SHIFTED, TARGET_2X2)
    assert out["gIoU"].item() == pytest.approx(100 * 2 / 6)
    assert out["cIoU"].item() == pytest.approx(100 * 2 / 6)
    assert out["num_samples"].item() == 1
    assert all(out[f"Pr@{x}"].item() == 0.0 for x in ("0.5", "0.6", "0.7", "0.8", "0.9"))
    assert "N-acc" not in out and "T-acc" not in out


def test_giou_and_ciou_differ_on_two_samples() -> None:
    # Sample A: I = 2, U = 6 (IoU 1/3). Sample B: one pixel predicted exactly (IoU 1).
    exact = _mask((4, 4), (3, 3))
    metric = ReferringSegmentationMetrics()
    metric.update(torch.stack([PRED_SHIFTED, exact]), torch.stack([TARGET_2X2, exact]))
    out = metric.compute()
    assert out["gIoU"].item() == pytest.approx(100 * (1 / 3 + 1) / 2)
    assert out["cIoU"].item() == pytest.approx(100 * 3 / 7)
    assert out["Pr@0.5"].item() == pytest.approx(50.0)
    assert out["Pr@0.9"].item() == pytest.approx(50.0)


def test_strict_versus_inclusive_precision_at_exactly_half() -> None:
    pred = _mask((4, 4), (0, 0), (0, 1))  # I = 2, U = 4 → IoU exactly 0.5
    assert _single(pred, TARGET_2X2, inclusive=False)["Pr@0.5"].item() == 0.0
    assert _single(pred, TARGET_2X2, inclusive=True)["Pr@0.5"].item() == 100.0
    assert _single(pred, TARGET_2X2, inclusive=True)["Pr@0.6"].item() == 0.0


def test_custom_threshold_keys() -> None:
    out = _single(TARGET_2X2, TARGET_2X2, thresholds=(0.25, 0.75))
    assert set(k for k in out if k.startswith("Pr@")) == {"Pr@0.25", "Pr@0.75"}


def test_empty_target_and_empty_prediction_is_perfect() -> None:
    out = _single(EMPTY, EMPTY)
    assert out["gIoU"].item() == 100.0
    assert out["cIoU"].item() == 100.0
    assert out["Pr@0.9"].item() == 100.0
    assert out["N-acc"].item() == 100.0
    assert torch.isnan(out["T-acc"])  # no non-empty target seen


def test_empty_target_with_prediction_and_generalised_accuracies() -> None:
    spurious = _mask((4, 4), (3, 0), (3, 1), (3, 2))
    preds = torch.stack([EMPTY, spurious, EMPTY, PRED_SHIFTED])
    targets = torch.stack([EMPTY, EMPTY, TARGET_2X2, TARGET_2X2])
    metric = ReferringSegmentationMetrics()
    metric.update(preds, targets)
    out = metric.compute()
    # IoUs: 1, 0, 0, 1/3.  ΣI = 2, ΣU = 0 + 3 + 4 + 6 = 13.
    assert _single(spurious, EMPTY)["gIoU"].item() == 0.0
    assert out["gIoU"].item() == pytest.approx(100 * (1 + 1 / 3) / 4)
    assert out["cIoU"].item() == pytest.approx(100 * 2 / 13)
    assert out["N-acc"].item() == pytest.approx(50.0)  # 1 of 2 empty targets predicted empty
    assert out["T-acc"].item() == pytest.approx(50.0)  # 1 of 2 non-empty targets predicted non-empty


def test_variable_size_list_input() -> None:
    target_a = _mask((3, 5), (0, 0), (0, 1), (2, 4))
    pred_a = _mask((3, 5), (0, 0), (2, 4), (1, 1))  # I = 2, U = 4
    target_b = _mask((7, 2), (6, 1))
    pred_b = _mask((7, 2), (6, 1))  # I = 1, U = 1
    metric = ReferringSegmentationMetrics()
    metric.update([pred_a, pred_b], [target_a, target_b])
    out = metric.compute()
    assert out["gIoU"].item() == pytest.approx(100 * (0.5 + 1) / 2)
    assert out["cIoU"].item() == pytest.approx(100 * 3 / 5)


def test_groups() -> None:
    metric = ReferringSegmentationMetrics(group_names=("vehicle", "building", "unused"))
    exact = _mask((4, 4), (3, 3))
    metric.update(
        torch.stack([PRED_SHIFTED, exact, EMPTY]),
        torch.stack([TARGET_2X2, exact, TARGET_2X2]),
        groups=["vehicle", "building", "vehicle"],
    )
    out = metric.compute()
    assert out["gIoU/vehicle"].item() == pytest.approx(100 * (1 / 3 + 0) / 2)
    assert out["cIoU/vehicle"].item() == pytest.approx(100 * 2 / 10)
    assert out["count/vehicle"].item() == 2
    assert out["gIoU/building"].item() == 100.0
    assert out["count/building"].item() == 1
    assert not any(k.endswith("/unused") for k in out)


def test_unknown_group_is_rejected_without_touching_state() -> None:
    metric = ReferringSegmentationMetrics(group_names=("vehicle",))
    with pytest.raises(ValueError, match=r"'ship'.*vehicle"):
        metric.update(TARGET_2X2[None], TARGET_2X2[None], groups=["ship"])
    assert metric.num_samples.item() == 0


def test_shape_mismatch_names_sample_and_shapes() -> None:
    metric = ReferringSegmentationMetrics()
    with pytest.raises(ValueError, match=r"sample 1.*\(4, 4\).*\(4, 5\)"):
        metric.update([EMPTY, EMPTY], [EMPTY, torch.zeros(4, 5, dtype=torch.bool)])
    with pytest.raises(ValueError, match=r"sample 0"):
        metric.update(EMPTY[None], torch.zeros(1, 3, 3, dtype=torch.bool))
    with pytest.raises(TypeError, match="boolean"):
        metric.update(EMPTY[None].float(), EMPTY[None])


def _random_batches(seed: int) -> list[tuple[list[Tensor], list[Tensor], list[str]]]:
    """Eight batches of four variable-size samples, some with empty targets."""
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for b in range(8):
        preds, targets, groups = [], [], []
        for i in range(4):
            h, w = (int(v) for v in torch.randint(3, 12, (2,), generator=gen))
            target = torch.rand(h, w, generator=gen) > (1.1 if (b + i) % 5 == 0 else 0.6)
            preds.append(target ^ (torch.rand(h, w, generator=gen) > 0.8))
            targets.append(target)
            groups.append(("a", "b", "c")[(b * 4 + i) % 3])
        batches.append((preds, targets, groups))
    return batches


def _assert_same_outputs(got: dict[str, Tensor], expected: dict[str, Tensor]) -> None:
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key].item() == pytest.approx(value.item(), rel=1e-12), key


def test_merged_states_equal_single_metric() -> None:
    batches = _random_batches(0)
    full, rank0, rank1 = (ReferringSegmentationMetrics(group_names=("a", "b", "c")) for _ in range(3))
    for i, batch in enumerate(batches):
        full.update(*batch)
        (rank0 if i % 2 == 0 else rank1).update(*batch)
    expected = full.compute()
    assert "N-acc" in expected
    rank0.merge_state(rank1)
    _assert_same_outputs(rank0.compute(), expected)
    assert rank0.intersection_sum == full.intersection_sum and rank0.union_sum == full.union_sum


def test_merge_refuses_different_configuration() -> None:
    with pytest.raises(ValueError, match="cannot merge"):
        ReferringSegmentationMetrics().merge_state(ReferringSegmentationMetrics(inclusive=True))


def _ddp_worker(rank: int, world_size: int, out_dir: str) -> None:
    grouped = ReferringSegmentationMetrics(group_names=("a", "b", "c"))
    ungrouped = ReferringSegmentationMetrics(inclusive=True)
    for i, batch in enumerate(_random_batches(0)):
        if i % world_size == rank:
            grouped.update(*batch)
            ungrouped.update(*batch[:2])
    # compute() all-reduces the sum states across the process group.
    torch.save({"grouped": grouped.compute(), "ungrouped": ungrouped.compute()}, f"{out_dir}/{rank}.pt")


@pytest.mark.slow  # two processes (DDP / gloo): the slow set, which CI runs too
def test_two_process_gloo_reduction_is_exact(tmp_path: Path) -> None:
    grouped = ReferringSegmentationMetrics(group_names=("a", "b", "c"))
    ungrouped = ReferringSegmentationMetrics(inclusive=True)
    for batch in _random_batches(0):
        grouped.update(*batch)
        ungrouped.update(*batch[:2])
    for result in run_on_two_gloo_ranks(_ddp_worker, tmp_path):
        _assert_same_outputs(result["grouped"], grouped.compute())
        _assert_same_outputs(result["ungrouped"], ungrouped.compute())
