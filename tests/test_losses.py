"""Tests for the Dice, orthogonality, contrastive and combined referring losses."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from conftest import run_on_two_gloo_ranks
from rsrefseg.training.losses import (
    ContrastiveLoss,
    ReferringLoss,
    _pooling_weights,
    dice_loss,
    orthogonality_loss,
)

GRID = 4


def _targets() -> Tensor:
    targets = torch.zeros(2, 1, 16, 16)
    targets[0, :, 2:9, 3:12] = 1
    targets[1, :, 8:, 8:] = 1
    return targets


def test_dice_perfect_and_inverse() -> None:
    targets = _targets()
    confident = (targets * 2 - 1) * 50
    assert dice_loss(confident, targets).item() == pytest.approx(0.0, abs=1e-4)
    assert dice_loss(-confident, targets).item() == pytest.approx(1.0, abs=1e-4)


def test_dice_matches_formula_by_hand() -> None:
    # p = 0.5 everywhere: Σpy = 0.5, Σp² = 1, Σy² = 1 for sample 0; Σpy = 1, Σp² = 1, Σy² = 2 for sample 1.
    targets = torch.tensor([[1.0, 0, 0, 0], [1.0, 1, 0, 0]]).view(2, 1, 2, 2)
    expected = ((1 - 1.0 / (2 + 2e-3)) + (1 - 2.0 / (3 + 2e-3))) / 2
    assert dice_loss(torch.zeros(2, 1, 2, 2), targets).item() == pytest.approx(expected, rel=1e-6)


def test_orthogonality_loss() -> None:
    e1, e2 = torch.eye(4)[0], torch.eye(4)[1]
    q1 = torch.stack([e1 + e2, e1 - e2, e1]).unsqueeze(0)  # token mean ∥ e1
    assert orthogonality_loss(q1, 3 * e1.expand(1, 3, 4)).item() == pytest.approx(1.0)
    assert orthogonality_loss(q1, -e1.expand(1, 3, 4)).item() == pytest.approx(1.0)
    assert orthogonality_loss(q1, e2.expand(1, 3, 4)).item() == pytest.approx(0.0, abs=1e-7)


def test_contrastive_temperature_init_clamp_and_projection() -> None:
    loss = ContrastiveLoss(vision_dim=8, text_dim=8)
    assert loss.logit_scale.item() == pytest.approx(1 / 0.07, rel=1e-5)
    assert isinstance(loss.projection, nn.Identity)
    with torch.no_grad():
        loss.log_temperature.fill_(math.log(1000.0))
    assert loss.logit_scale.item() == pytest.approx(100.0)
    assert isinstance(ContrastiveLoss(vision_dim=8, text_dim=6).projection, nn.Linear)
    with pytest.raises(ValueError, match="init_temperature"):
        ContrastiveLoss(vision_dim=8, text_dim=8, init_temperature=200.0)
    # max_temperature=None: the release's unclamped temperature
    unclamped = ContrastiveLoss(vision_dim=8, text_dim=8, max_temperature=None)
    with torch.no_grad():
        unclamped.log_temperature.fill_(math.log(1000.0))
    assert unclamped.logit_scale.item() == pytest.approx(1000.0, rel=1e-5)


def _aligned_batch(batch: int = 4, dim: int = 8) -> tuple[Tensor, Tensor, Tensor]:
    """Sample i: every vision token and every Q2 token ≈ e_i, so matched pairs align."""
    gen = torch.Generator().manual_seed(0)
    basis = torch.eye(dim)[:batch]
    tokens = basis[:, None, :] + 0.05 * torch.randn(batch, GRID**2, dim, generator=gen)
    q2 = basis[:, None, :] + 0.05 * torch.randn(batch, 3, dim, generator=gen)
    masks = torch.zeros(batch, 1, 16, 16)
    masks[:, :, 4:12, 4:12] = 1
    return tokens, masks, q2


def test_contrastive_matched_pairs_beat_shuffled_and_gradients_flow() -> None:
    assert not (dist.is_available() and dist.is_initialized())  # plain in-batch InfoNCE path
    loss_fn = ContrastiveLoss(vision_dim=8, text_dim=8)
    tokens, masks, q2 = _aligned_batch()
    tokens.requires_grad_(True)
    q2.requires_grad_(True)
    matched = loss_fn(tokens, GRID, masks, q2)
    shuffled = loss_fn(tokens, GRID, masks, q2.roll(1, dims=0))
    assert matched.item() < 0.1 < shuffled.item()
    shuffled.backward()
    for grad in (tokens.grad, q2.grad, loss_fn.log_temperature.grad):
        assert grad is not None and grad.abs().sum() > 0


def test_contrastive_pooling_fallback_and_empty_targets() -> None:
    masks = torch.zeros(3, 1, 16, 16)
    masks[0, 0, 0, 0] = 1  # missed by bilinear sampling (taps at pixels 4k+1, 4k+2) → area fallback, cell 0
    masks[1, 0, 13, 14] = 1  # hit by one bilinear tap with weight 1/4 → below 0.5 → fallback, cell (3, 3)
    weights, has_target = _pooling_weights(masks, GRID)
    assert weights[0].nonzero().flatten().tolist() == [0]
    assert weights[1].nonzero().flatten().tolist() == [15]
    assert has_target.tolist() == [True, True, False]
    # An empty-target sample adds no loss of its own but still serves as a negative.
    tokens, full_masks, q2 = _aligned_batch(batch=3)
    full_masks[2] = 0
    loss = ContrastiveLoss(vision_dim=8, text_dim=8)(tokens, GRID, full_masks, q2)
    assert torch.isfinite(loss)


def test_contrastive_runs_in_float32_under_autocast() -> None:
    tokens, masks, q2 = _aligned_batch()
    loss_fn = ContrastiveLoss(vision_dim=8, text_dim=6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = loss_fn(tokens.bfloat16(), GRID, masks, q2[..., :6].bfloat16())
    assert out.dtype == torch.float32


def _loss_inputs(batch: int = 2) -> dict[str, object]:
    gen = torch.Generator().manual_seed(1)
    return {
        "logits": torch.randn(batch, 1, 8, 8, generator=gen),
        "targets": _targets()[:batch],
        "q1": torch.randn(batch, 3, 6, generator=gen),
        "q2": torch.randn(batch, 3, 6, generator=gen),
        "vision_tokens": torch.randn(batch, GRID**2, 8, generator=gen),
        "grid_size": GRID,
    }


def test_referring_loss_weights_and_terms() -> None:
    torch.manual_seed(0)
    loss_fn = ReferringLoss(contrastive=ContrastiveLoss(vision_dim=8, text_dim=6))
    inputs = _loss_inputs()
    out = loss_fn(**inputs)
    assert out.keys() == {"loss", "bce", "dice", "orth", "contrastive"}
    expected = 5 * out["bce"] + 5 * out["dice"] + 0.5 * out["orth"] + 0.5 * out["contrastive"]
    assert out["loss"].item() == pytest.approx(expected.item())
    # Logits at 8×8 are resized bilinearly to the 16×16 targets.
    resized = F.interpolate(inputs["logits"], size=(16, 16), mode="bilinear", align_corners=False)
    bce = F.binary_cross_entropy_with_logits(resized, inputs["targets"])
    assert out["bce"].item() == pytest.approx(bce.item())
    assert out["dice"].item() == pytest.approx(dice_loss(resized, inputs["targets"]).item())

    custom = ReferringLoss(bce_weight=1.0, dice_weight=0.0, orth_weight=2.0, contrastive_weight=0.0)(**inputs)
    assert custom.keys() == {"loss", "bce", "orth"}
    assert custom["loss"].item() == pytest.approx((custom["bce"] + 2 * custom["orth"]).item())


def test_referring_loss_skips_terms_without_inputs() -> None:
    loss_fn = ReferringLoss(contrastive=ContrastiveLoss(vision_dim=8, text_dim=6))
    out = loss_fn(**{**_loss_inputs(), "q1": None, "q2": None})
    assert out.keys() == {"loss", "bce", "dice"}
    out = loss_fn(**{**_loss_inputs(), "vision_tokens": None})
    assert out.keys() == {"loss", "bce", "dice", "orth"}


def test_referring_loss_rejects_bad_configuration() -> None:
    with pytest.raises(ValueError, match="contrastive_weight"):
        ReferringLoss()
    with pytest.raises(ValueError, match="non-negative"):
        ReferringLoss(bce_weight=-1.0, contrastive_weight=0.0)
    with pytest.raises(ValueError, match="positive"):
        ReferringLoss(bce_weight=0, dice_weight=0, orth_weight=0, contrastive_weight=0)


def test_referring_loss_ignores_pixels_outside_valid() -> None:
    loss_fn = ReferringLoss(contrastive_weight=0.0)
    inputs = {**_loss_inputs(), "logits": torch.randn(2, 1, 16, 16)}
    valid = torch.zeros(2, 1, 16, 16, dtype=torch.bool)
    valid[..., :12, :10] = True
    before = loss_fn(**inputs, valid=valid)
    changed = inputs["logits"].clone()
    changed[~valid] = 30.0
    after = loss_fn(**{**inputs, "logits": changed}, valid=valid)
    for key in ("bce", "dice", "loss"):
        assert after[key].item() == pytest.approx(before[key].item(), rel=1e-6)
    assert loss_fn(**{**inputs, "logits": changed})["bce"].item() != pytest.approx(before["bce"].item())


def _ddp_batch() -> tuple[Tensor, Tensor, Tensor]:
    """Six samples with distinct masks (one a fallback-sized object): tokens B×16×8, masks, q2 B×3×6."""
    gen = torch.Generator().manual_seed(2)
    tokens = torch.randn(6, GRID**2, 8, generator=gen)
    q2 = torch.randn(6, 3, 6, generator=gen)
    masks = (torch.rand(6, 1, 16, 16, generator=gen) > 0.5).float()
    masks[5] = 0
    masks[5, 0, 0, 0] = 1
    return tokens, masks, q2


def _make_contrastive() -> ContrastiveLoss:
    torch.manual_seed(0)  # identical projection weights on every rank
    return ContrastiveLoss(vision_dim=8, text_dim=6)


def _ddp_worker(rank: int, world_size: int, out_dir: str) -> None:
    loss_fn = _make_contrastive()
    tokens, masks, q2 = _ddp_batch()
    results: dict[str, float] = {}
    for name, bounds in {"even": ((0, 3), (3, 6)), "uneven": ((0, 4), (4, 6))}.items():
        start, stop = bounds[rank]
        local_tokens = tokens[start:stop].clone().requires_grad_(True)
        local_q2 = q2[start:stop].clone().requires_grad_(True)
        loss = loss_fn(local_tokens, GRID, masks[start:stop], local_q2)
        loss.backward()
        results[name] = loss.item()
        grads = (local_tokens.grad, local_q2.grad)
        results[f"{name}_grad"] = min(0.0 if g is None else g.abs().sum().item() for g in grads)
    torch.save(results, f"{out_dir}/{rank}.pt")


@pytest.mark.slow  # two processes (DDP / gloo): the slow set, which CI runs too
def test_two_process_gloo_gathered_loss_equals_single_process(tmp_path: Path) -> None:
    tokens, masks, q2 = _ddp_batch()
    single = _make_contrastive()(tokens, GRID, masks, q2).item()
    ranks = run_on_two_gloo_ranks(_ddp_worker, tmp_path)
    assert (ranks[0]["even"] + ranks[1]["even"]) / 2 == pytest.approx(single, abs=1e-5)
    # With 4 + 2 samples each rank averages its own rows, so the sample-weighted mean matches.
    assert (4 * ranks[0]["uneven"] + 2 * ranks[1]["uneven"]) / 6 == pytest.approx(single, abs=1e-5)
    assert ranks[0]["even"] != pytest.approx(ranks[1]["even"])
    assert all(r["even_grad"] > 0 and r["uneven_grad"] > 0 for r in ranks)


def test_contrastive_ground_truth_resize_follows_the_align_corners_switch() -> None:
    """align_corners=False (ours) samples each grid cell at its centre; True (the release) at
    i·(H−1)/(g−1), so the last column of cells reads the image's border pixels."""
    masks = torch.zeros(1, 1, 16, 16)
    masks[0, 0, :, 15] = 1  # a one-pixel column on the right border
    centred, _ = _pooling_weights(masks, GRID)
    release, _ = _pooling_weights(masks, GRID, align_corners=True)
    last_column = [GRID * row + GRID - 1 for row in range(GRID)]
    assert release[0].nonzero().flatten().tolist() == last_column
    # cell centres (pixels 13.5 of each 4-pixel cell, sampled at 13 and 14) miss it: the area fallback
    assert centred[0].nonzero().flatten().tolist() == [GRID - 1]
    # the loss pools what its weights select
    gen = torch.Generator().manual_seed(0)
    tokens, q2 = torch.randn(2, GRID**2, 8, generator=gen), torch.randn(2, 3, 8, generator=gen)
    batch = torch.cat([masks, masks.flip(-1)])
    ours = ContrastiveLoss(vision_dim=8, text_dim=8)(tokens, GRID, batch, q2)
    faithful = ContrastiveLoss(vision_dim=8, text_dim=8, align_corners=True)(tokens, GRID, batch, q2)
    assert not torch.allclose(ours, faithful)
