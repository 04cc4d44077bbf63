"""The Python predictor: exactly the evaluation path, shared image encodings, explanations, bad input."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import build_tiny_net, compose_config
from rsrefseg.evaluation.run import evaluate
from rsrefseg.predict import Predictor
from rsrefseg.predict.explain import MAPS
from rsrefseg.predict.images import ExifOrientationWarning
from rsrefseg.predict.sentences import SentenceTruncatedWarning
from test_checkpoints import FAMILIES, backbone_files, build, save_like_lightning, train_one_step

#: (height, width, sentence): sizes that exercise the resize, the padding and the resize back
IMAGES = [
    (50, 80, "the red car left of the building"),
    (97, 61, "the large gray building"),
    (64, 64, "a ship"),
]


def write_jsonl_dataset(root: Path) -> list[dict]:
    """A unified-JSONL test split of odd-sized PNG images with polygon masks (docs/data.md §7)."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    rows = []
    for i, (h, w, sentence) in enumerate(IMAGES):
        name = f"scene{i}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "images" / name)
        x0, y0, x1, y1 = w * 0.2, h * 0.3, w * 0.7, h * 0.8
        rows.append(
            {
                "image_id": i,
                "sent": sentence,
                "file_name": name,
                "height": h,
                "width": w,
                "sample_id": f"s{i}",
                "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]],
            }
        )
    (root / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def test_a_mask_is_exactly_what_rsrefseg_eval_scores(tmp_path, tiny_checkpoint):
    """Per image: the predictor's mask against the ground truth gives rsrefseg-eval's pixel counts."""
    root = tmp_path / "data"
    rows = write_jsonl_dataset(root)
    out = tmp_path / "eval"
    cfg = compose_config(
        "eval",
        [f"ckpt_path={tiny_checkpoint}", "data=jsonl", f"data.root={root}", f"paths.output_dir={out}"],
    )
    evaluate(cfg)
    scored = {row["sample_id"]: row for row in csv.DictReader((out / "samples_test.csv").open())}
    predictor = Predictor.from_checkpoint(tiny_checkpoint)
    from rsrefseg.data.decode import decode_segmentation

    foreground = []
    for row in rows:
        truth = decode_segmentation(row["segmentation"], size=(row["height"], row["width"])).astype(bool)
        prediction = predictor.predict(root / "images" / row["file_name"], row["sent"])
        assert prediction.mask.shape == truth.shape == prediction.probability.shape
        sample = scored[row["sample_id"]]
        assert int((prediction.mask & truth).sum()) == int(sample["intersection"])
        assert int((prediction.mask | truth).sum()) == int(sample["union"])
        foreground.append(prediction.mask.mean())
    assert all(0 < share < 1 for share in foreground)  # masks that are neither empty nor full


class CountingEncoders:
    """Counts the calls of CLIP's and SAM's image encoders (and the images they see)."""

    def __init__(self, net) -> None:
        self.calls: dict[str, list[int]] = {"clip": [], "sam": []}
        for name, owner in (("clip", net.clip), ("sam", net.sam)):
            original = owner.encode_image

            def counted(images, _original=original, _name=name):
                self.calls[_name].append(images.shape[0])
                return _original(images)

            owner.encode_image = counted


@pytest.mark.parametrize(("clip", "sam"), FAMILIES)
def test_sentences_on_one_image_equal_each_alone_and_encode_the_image_once(tmp_path, clip, sam):
    module = build([*backbone_files(tmp_path, clip, sam)])
    train_one_step(module)  # trained BatchNorm statistics and non-trivial prompts
    predictor = Predictor(module.net, input_size=64)
    image = np.random.default_rng(1).random((70, 45, 3), dtype=np.float32)
    sentences = ["the red car left of the building", "a ship", "the large gray building near the road"]
    counter = CountingEncoders(predictor.net)
    together = predictor.predict(image, sentences)
    assert counter.calls == {"clip": [1], "sam": [1]}
    alone = [predictor.predict(image, s) for s in sentences]
    for joint, single in zip(together, alone, strict=True):
        assert joint.sentence == single.sentence
        np.testing.assert_allclose(joint.probability, single.probability, atol=1e-5)
        assert (joint.mask != single.mask).mean() < 1e-3  # only pixels at the threshold may flip


def test_images_are_batched_and_each_equals_its_own_call():
    predictor = Predictor(build_tiny_net().eval(), input_size=64)
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(40, 90), (64, 64), (120, 33)]]
    pairs = [(images[0], ["the tree", "a ship"]), (images[1], "the red car"), (images[2], ["the road"])]
    counter = CountingEncoders(predictor.net)
    batched = predictor.predict_many(pairs, batch_size=2)
    assert counter.calls["clip"] == counter.calls["sam"] == [2, 1]  # two batches of images
    assert [len(group) for group in batched] == [2, 1, 1]
    for (image, sentences), group in zip(pairs, batched, strict=True):
        single = predictor.predict(image, sentences)
        single = single if isinstance(single, list) else [single]
        for a, b in zip(group, single, strict=True):
            np.testing.assert_allclose(a.probability, b.probability, atol=1e-5)
            assert a.mask.shape == image.shape[:2]


def test_every_image_input_reads_the_same():
    predictor = Predictor(build_tiny_net().eval(), input_size=64)
    pixels = np.random.default_rng(3).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    inputs = [
        pixels,
        Image.fromarray(pixels),
        pixels.astype(np.float32) / 255,
        torch.from_numpy(pixels).permute(2, 0, 1).float() / 255,
        np.dstack([pixels, np.full((30, 50), 255, np.uint8)]),  # RGBA: alpha dropped
    ]
    reference = predictor.predict(pixels, "the car").probability
    for item in inputs:
        np.testing.assert_allclose(predictor.predict(item, "the car").probability, reference, atol=1e-6)


@pytest.mark.parametrize(
    ("image", "error", "message"),
    [
        ("missing.png", FileNotFoundError, "image not found"),
        ("broken.png", ValueError, "unreadable image"),
        (np.zeros((10, 10, 2), np.uint8), ValueError, "expected H×W×3"),
        (np.full((10, 10, 3), 2.0, np.float32), ValueError, r"values in \[2, 2\]; expected \[0, 1\]"),
        (np.zeros((10, 10, 3), np.int32), ValueError, "dtype int32"),
        (torch.zeros(10, 10, 3), ValueError, "expected 3×H×W"),
        (42, TypeError, "expected a file path"),
    ],
)
def test_bad_images_are_named(tmp_path, monkeypatch, image, error, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    predictor = Predictor(build_tiny_net().eval(), input_size=64)
    with pytest.raises(error, match=message):
        predictor.predict(image, "the car")


def test_sentences_empty_refused_long_truncated_with_a_warning():
    predictor = Predictor(build_tiny_net().eval(), input_size=64)
    image = np.zeros((20, 20, 3), np.uint8)
    for bad in ["", "   \t"]:
        with pytest.raises(ValueError, match="sentence 1 is empty"):
            predictor.predict(image, ["the car", bad])
    long = " ".join(["the small gray vehicle left of the large building"] * 6)  # 9 words × 6 + 2 = 56 > 32
    with pytest.warns(SentenceTruncatedWarning, match=r"has 56 tokens .* reads 32: the last 24 tokens"):
        truncated = predictor.predict(image, long)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert predictor.predict(image, "the  car\n").sentence == "the car"  # whitespace as in training
    assert truncated.mask.shape == (20, 20)


def test_explain_gives_every_stage_at_the_image_size():
    predictor = Predictor(build_tiny_net().eval(), input_size=64)
    image = np.random.default_rng(4).integers(0, 256, (48, 72, 3), dtype=np.uint8)
    explanation = predictor.explain(image, "the red car")
    assert list(explanation.maps) == list(MAPS)
    for name, value in explanation.maps.items():
        expected = (9, 48, 72) if name == "sparse_attention" else (48, 72)
        assert value.shape == expected and value.dtype == np.float32 and np.isfinite(value).all(), name
    for name in ("clip_similarity", "stage1", "stage2"):
        assert explanation.maps[name].min() >= -1.0 - 1e-5 and explanation.maps[name].max() <= 1.0 + 1e-5
    assert not np.allclose(explanation.maps["stage1"], explanation.maps["stage2"])
    assert (explanation.maps["sparse_attention"] >= 0).all()
    direct = predictor.predict(image, "the red car")
    np.testing.assert_allclose(explanation.prediction.probability, direct.probability, atol=1e-6)
    np.testing.assert_array_equal(explanation.prediction.mask, direct.mask)


@pytest.mark.parametrize(
    ("prompter", "absent"),
    [
        ("first_order", {"stage2"}),
        ("no_sparse", {"sparse_attention"}),
        ("activation_v1", {"stage1", "stage2", "sparse_attention"}),
    ],
)
def test_explain_follows_the_prompter_variant(prompter, absent):
    predictor = Predictor(build_tiny_net([f"model/prompter={prompter}"]).eval(), input_size=64)
    maps = predictor.explain(np.zeros((32, 32, 3), np.uint8), "the tree").maps
    assert set(MAPS) - set(maps) == absent


def test_precision_and_device_choices():
    net = build_tiny_net().eval()
    image = np.random.default_rng(5).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    fp32 = Predictor(net, input_size=64).predict(image, "the car")
    bf16 = Predictor(net, input_size=64, precision="bf16").predict(image, "the car")
    assert bf16.probability.dtype == np.float32
    assert np.abs(bf16.probability - fp32.probability).max() < 0.1
    with pytest.raises(ValueError, match="fp16 runs on CUDA only"):
        Predictor(net, input_size=64, precision="fp16")
    with pytest.raises(ValueError, match="precision='int8'"):
        Predictor(net, input_size=64, precision="int8")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            Predictor(net, input_size=64, device="cuda")


def test_lora_checkpoint_needs_its_backbone_files(tmp_path):
    files = backbone_files(tmp_path)
    module = build([*files, "model.finetune=lora"])
    train_one_step(module)
    path = tmp_path / "lora.ckpt"
    save_like_lightning(module, path)
    image = np.random.default_rng(6).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    expected = Predictor(module.net, input_size=64).predict(image, "a ship").probability
    np.testing.assert_allclose(
        Predictor.from_checkpoint(path).predict(image, "a ship").probability, expected, atol=1e-6
    )
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    (tmp_path / "sam.pt").rename(moved / "sam.pt")
    with pytest.raises(
        FileNotFoundError,
        match=r"trained weights only .*/sam\.pt \(config key model\.sam\.sam\.checkpoint\)\. .*--set",
    ):
        Predictor.from_checkpoint(path)
    repointed = Predictor.from_checkpoint(path, overrides=[f"model.sam.sam.checkpoint={moved / 'sam.pt'}"])
    np.testing.assert_allclose(repointed.predict(image, "a ship").probability, expected, atol=1e-6)
    with pytest.raises(ValueError, match=r"has no key 'model\.sam\.nothing'"):
        Predictor.from_checkpoint(path, overrides=["model.sam.nothing=1"])


def test_other_files_are_refused_by_name(tmp_path):
    (tmp_path / "other.ckpt").write_bytes(b"")
    with pytest.raises(ValueError, match="is empty"):
        Predictor.from_checkpoint(tmp_path / "other.ckpt")
    torch.save({"state_dict": {}, "epoch": 3}, tmp_path / "lightning.ckpt")
    with pytest.raises(ValueError, match="is not an rsrefseg checkpoint"):
        Predictor.from_checkpoint(tmp_path / "lightning.ckpt")
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        Predictor.from_checkpoint(tmp_path / "nothing.ckpt")


def test_an_exif_rotated_file_is_read_as_stored_with_a_warning(tmp_path):
    """Pixels as stored, as the datasets read them; the EXIF orientation is named, not applied."""
    pixels = np.random.default_rng(7).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to view"
    Image.fromarray(pixels).save(tmp_path / "photo.png", exif=exif)
    Image.fromarray(pixels).save(tmp_path / "plain.png")
    predictor = Predictor(build_tiny_net().eval(), input_size=64)
    with pytest.warns(ExifOrientationWarning, match="EXIF orientation 6 not applied.*exif_transpose"):
        rotated = predictor.predict(tmp_path / "photo.png", "the car")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain = predictor.predict(tmp_path / "plain.png", "the car")
    assert rotated.mask.shape == (20, 30)
    np.testing.assert_array_equal(rotated.probability, plain.probability)
