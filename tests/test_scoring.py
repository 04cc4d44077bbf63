"""Scoring at the original size vs the input size, with padding never counted, computed by hand."""

from __future__ import annotations

import pytest
import torch

from rsrefseg.evaluation.baselines import BASELINES, update_baselines
from rsrefseg.evaluation.metrics import ReferringSegmentationMetrics
from rsrefseg.evaluation.scoring import predict_masks, score_batch


def wide_sample() -> tuple[torch.Tensor, dict]:
    """A 6×12 image on an 8×8 canvas: content 4×8 at the top, rows 4–7 padding.

    Logits (already at 8×8): +10 in content columns 0–3, −10 in columns 4–7, and +10 on every padding
    pixel (a prediction there must not count). Ground truth: columns 0–6 of the original 6×12 mask,
    columns 0–4 of the 4×8 input-size mask.
    """
    logits = torch.full((1, 1, 8, 8), -10.0)
    logits[..., :4, :4] = 10.0
    logits[..., 4:, :] = 10.0
    original = torch.zeros(6, 12, dtype=torch.bool)
    original[:, :7] = True
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4, :5] = 1.0
    batch = {
        "image": torch.zeros(1, 3, 8, 8),
        "mask": mask,
        "original_mask": [original],
        "content_size": [(4, 8)],
        "original_size": [(6, 12)],
    }
    return logits, batch


def test_original_size_crops_the_padding_then_resizes():
    logits, batch = wide_sample()
    (pred,), (target,) = score_batch(logits, batch, resolution="original")
    assert pred.shape == target.shape == (6, 12)
    # bilinear ×1.5 (align_corners=False): output column x reads input column (x + 0.5) / 1.5 − 0.5;
    # x = 5 → 3.17 (5/6 of +10, 1/6 of −10: positive), x = 6 → 3.83 (negative). Columns 0–5 in every row.
    expected = torch.zeros(6, 12, dtype=torch.bool)
    expected[:, :6] = True
    assert torch.equal(pred, expected)
    metrics = ReferringSegmentationMetrics()
    metrics.update([pred], [target])
    assert metrics.compute()["gIoU"].item() == pytest.approx(100 * 36 / 42)


@pytest.mark.parametrize(("inclusive", "pr80"), [(False, 0.0), (True, 100.0)])
def test_input_size_scores_the_content_of_the_canvas(inclusive, pr80):
    logits, batch = wide_sample()
    (pred,), (target,) = score_batch(logits, batch, resolution="input")
    assert pred.shape == target.shape == (4, 8)
    assert pred[:, :4].all() and not pred[:, 4:].any()
    # I = 4 rows × 4 columns, U = 4 × 5: IoU exactly 0.8 — Pr@0.8 depends on > vs ≥
    metrics = ReferringSegmentationMetrics(inclusive=inclusive)
    metrics.update([pred], [target])
    values = metrics.compute()
    assert values["gIoU"].item() == pytest.approx(80.0)
    assert values["Pr@0.8"].item() == pr80


def test_padding_predictions_never_count():
    logits, batch = wide_sample()
    logits[..., 4:, :] = -10.0  # flip every padding prediction
    for resolution in ("original", "input"):
        first = score_batch(logits, batch, resolution=resolution)
        second = score_batch(wide_sample()[0], batch, resolution=resolution)
        assert all(torch.equal(a, b) for a, b in zip(first[0], second[0], strict=True))


def test_low_resolution_logits_are_upsampled_to_the_canvas_first():
    logits, batch = wide_sample()
    (full,), _ = score_batch(logits, batch, resolution="input")
    # the same logits given at 4×4 (every 2×2 block constant) describe the same canvas
    (low,) = predict_masks(
        logits[..., ::2, ::2], canvas_size=8, content_sizes=[(4, 8)], output_sizes=[(4, 8)]
    )
    assert torch.equal(low, full)


def test_baselines_follow_the_resolution():
    logits, batch = wide_sample()
    whole = {}
    for resolution, shape in (("original", (6, 12)), ("input", (4, 8))):
        _, targets = score_batch(logits, batch, resolution=resolution)
        assert targets[0].shape == shape
        metrics = {name: ReferringSegmentationMetrics() for name in BASELINES}
        update_baselines(metrics, targets)
        whole[resolution] = metrics["whole_image"].compute()["gIoU"].item()
        assert metrics["all_background"].compute()["gIoU"].item() == 0.0
    assert whole["original"] == pytest.approx(100 * 42 / 72) and whole["input"] == pytest.approx(
        100 * 20 / 32
    )
    with pytest.raises(ValueError, match=r"metrics\.resolution"):
        score_batch(logits, batch, resolution="native")


def test_original_size_without_original_masks_is_refused():
    """No silent fallback to the input-size masks under an "original" label."""
    logits, batch = wide_sample()
    del batch["original_mask"]
    with pytest.raises(ValueError, match=r"original_mask.*metrics\.resolution=input"):
        score_batch(logits, batch, resolution="original")
    (_,), (target,) = score_batch(logits, batch, resolution="input")
    assert target.shape == (4, 8)


def test_fit_then_eval_on_a_non_square_layout_at_both_resolutions(tmp_path):
    """RefSegRS layout with non-square images: a short fit, then rsrefseg-eval at both resolutions.

    Eval takes the network (and so the input size) from the checkpoint and reproduces the run's
    own test score at the original size; the input-size score is computed on the same predictions.
    """
    import fixtures_layouts as layouts
    from conftest import compose_config
    from rsrefseg.evaluation.run import evaluate
    from rsrefseg.training.run import train

    layouts.make_refsegrs(tmp_path / "data" / "RefSegRS")
    # a 40 px canvas: every fixture image (32–64 px, mostly non-square) is resized and padded
    common = [
        f"paths.data_dir={tmp_path / 'data'}",
        "data=refsegrs",
        "data.num_workers=0",
        "data.image_size=40",
    ]
    payload = train(
        compose_config(
            "train",
            [
                *common,
                "logger=none",
                "trainer.max_steps=2",
                "trainer.val_check_interval=1",
                "trainer.check_val_every_n_epoch=null",
                "data.batch_size=2",
                "data.persistent_workers=false",
                "shuffled_sentence_test=false",
            ],
        )
    )
    best = payload["best_checkpoint"]
    scores = {}
    for resolution in ("original", "input"):
        result = evaluate(
            compose_config(
                "eval",
                [*common, f"ckpt_path={best}", "split=test", f"metrics.resolution={resolution}"],
            )
        )
        scores[resolution] = result["metrics"]["test"]
    assert scores["original"]["gIoU"] == pytest.approx(payload["metrics"]["test"]["gIoU"], abs=1e-4)
    assert scores["original"]["num_samples"] == scores["input"]["num_samples"] == 4
    # the same predictions scored on different pixel grids give different numbers
    assert scores["original"]["gIoU"] != pytest.approx(scores["input"]["gIoU"], abs=1e-3)
