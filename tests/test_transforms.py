"""Tests of the sample transforms (rsrefseg.data.transforms): resize-and-pad, mirrored flips."""

from __future__ import annotations

import pytest
import torch

from rsrefseg.data.transforms import Compose, HorizontalFlip, ResizePad, check_output, mirror_sentence


def _sample(height: int, width: int, sentence: str = "the car on the left") -> dict:
    torch.manual_seed(0)
    mask = torch.zeros(1, height, width)
    mask[:, height // 4 : height // 2, : width // 3] = 1.0  # a block in the left part
    return {"image": torch.rand(3, height, width), "mask": mask, "sentence": sentence}


# ------------------------------------------------------------------------------------------------
# ResizePad
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("height", "width", "content"),
    [(48, 64, (48, 64)), (64, 40, (64, 40)), (32, 60, (34, 64)), (100, 50, (64, 32)), (64, 64, (64, 64))],
)
def test_resize_pad_keeps_the_aspect_and_pads_bottom_right(height, width, content):
    sample = _sample(height, width)
    out = ResizePad(size=64)(sample)
    h, w = content
    assert out["content_size"] == (h, w)
    assert out["image"].shape == (3, 64, 64) and out["mask"].shape == (1, 64, 64)
    assert out["valid"].dtype == torch.bool and out["valid"].shape == (1, 64, 64)
    assert out["valid"][:, :h, :w].all() and out["valid"].sum() == h * w
    # padding is zero in the image and the mask
    assert out["image"][:, h:, :].abs().sum() == 0 and out["image"][:, :, w:].abs().sum() == 0
    assert out["mask"][~out["valid"]].sum() == 0
    assert set(out["mask"].unique().tolist()) <= {0.0, 1.0}
    assert out["image"].min() >= 0 and out["image"].max() <= 1
    # the ground truth at the original size is the incoming mask, unchanged
    assert out["original_mask"].dtype == torch.bool and out["original_mask"].shape == (height, width)
    assert torch.equal(out["original_mask"], sample["mask"][0].bool())
    assert out["sentence"] == sample["sentence"]


def test_resize_pad_is_exact_when_the_image_already_has_the_input_size():
    sample = _sample(64, 64)
    out = ResizePad(size=64)(sample)
    assert torch.equal(out["image"], sample["image"]) and torch.equal(out["mask"], sample["mask"])
    assert out["valid"].all()


def test_resize_pad_mask_follows_the_content():
    """A downscaled block keeps its place and its area share (to a pixel of rounding per side)."""
    sample = _sample(128, 96)
    out = ResizePad(size=64)(sample)
    h, w = out["content_size"]
    assert (h, w) == (64, 48)
    rows = out["mask"][0].any(dim=1).nonzero().flatten()
    cols = out["mask"][0].any(dim=0).nonzero().flatten()
    assert rows.min().item() == pytest.approx(16, abs=1) and rows.max().item() == pytest.approx(31, abs=1)
    assert cols.min().item() == 0 and cols.max().item() == pytest.approx(15, abs=1)


def test_resize_pad_rejects_bad_input():
    with pytest.raises(ValueError, match="size"):
        ResizePad(size=0)
    bad = _sample(32, 32)
    bad["mask"] = torch.zeros(1, 16, 16)
    with pytest.raises(ValueError, match=r"differ in size"):
        ResizePad(size=32)(bad)


def test_a_pipeline_without_resize_pad_is_named():
    transform = Compose([HorizontalFlip(p=0.0)])
    with pytest.raises(ValueError, match=r"HorizontalFlip.*ResizePad"):
        check_output(transform(_sample(8, 8)), transform)


# ------------------------------------------------------------------------------------------------
# Horizontal flip: the sentence must stay true
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sentence", "mirrored"),
    [
        ("the car left of the building", "the car right of the building"),
        ("the building right of the road", "the building left of the road"),
        ("Leftmost van at the top-left", "Rightmost van at the top-right"),
        ("upper right corner, rightmost one", "upper left corner, leftmost one"),
        ("THE RIGHT car", "THE LEFT car"),
        ("the right-hand lane", "the left-hand lane"),
        ("in the northwest, the westernmost tank", "in the northeast, the easternmost tank"),
        ("the eastern part, moving westward", "the western part, moving eastward"),
        ("the field at the bottom-left of the image", "the field at the bottom-right of the image"),
        # "right" as an intensifier is not a direction
        ("the tree right next to the road", "the tree right next to the road"),
        ("the ship right in the middle", "the ship right in the middle"),
        # words that merely contain the letters stay
        ("a bright leftover eastbound brightness", "a bright leftover eastbound brightness"),
        ("the white storage tank", "the white storage tank"),
    ],
)
def test_mirror_sentence(sentence, mirrored):
    assert mirror_sentence(sentence) == mirrored


def test_mirroring_twice_restores_the_sentence():
    sentence = "the leftmost car, left of the westernmost building at the top-right, east of the road"
    assert mirror_sentence(sentence) != sentence
    assert mirror_sentence(mirror_sentence(sentence)) == sentence


def test_flip_flips_pixels_and_words_together():
    sample = _sample(16, 24, "the car on the left")
    out = HorizontalFlip(p=1.0)(sample)
    assert torch.equal(out["image"], sample["image"].flip(-1))
    assert torch.equal(out["mask"], sample["mask"].flip(-1))
    assert out["sentence"] == "the car on the right"
    # the block was in the left third; now it is in the right third
    assert out["mask"][0, :, -(24 // 3) :].sum() > 0 and out["mask"][0, :, : 24 // 3].sum() == 0


def test_flip_is_off_by_default_and_seeded_by_torch():
    sample = _sample(8, 8)
    assert HorizontalFlip()(sample) is sample
    flip = HorizontalFlip(p=0.5)
    torch.manual_seed(3)
    first = [flip(sample)["sentence"] for _ in range(40)]
    torch.manual_seed(3)
    second = [flip(sample)["sentence"] for _ in range(40)]
    assert first == second
    assert 5 < first.count("the car on the right") < 35
    with pytest.raises(ValueError, match="p="):
        HorizontalFlip(p=1.5)


def test_flip_then_resize_pad_reports_the_flipped_ground_truth():
    sample = _sample(48, 64)
    out = Compose([HorizontalFlip(p=1.0), ResizePad(size=32)])(sample)
    assert torch.equal(out["original_mask"], sample["mask"][0].flip(-1).bool())
    assert out["content_size"] == (24, 32)
