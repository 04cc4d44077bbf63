"""Tests of the synthetic referring-segmentation generator (rsrefseg.data.synthetic)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from rsrefseg.data.synthetic import (
    CATEGORIES,
    EXPRESSION_TYPES,
    SPLITS,
    Description,
    Expression,
    SceneObject,
    SyntheticRefSegDataset,
    SyntheticSample,
    SyntheticSceneGenerator,
    difficulty_report,
    export_unified_jsonl,
    referents,
)
from rsrefseg.data.synthetic_render import CATEGORY_STYLES, colour_rgb, object_mask

SAMPLES_PER_SPLIT = 500


@pytest.fixture(scope="module")
def generator() -> SyntheticSceneGenerator:
    # the default run's generator (conf/data/synthetic.yaml)
    return SyntheticSceneGenerator(seed=0, object_scale=1.4)


@pytest.fixture(scope="module")
def samples(generator: SyntheticSceneGenerator) -> dict[str, list[SyntheticSample]]:
    return {split: [generator.sample(split, i) for i in range(SAMPLES_PER_SPLIT)] for split in SPLITS}


def _car(box: tuple[int, int, int, int], colour: str = "red", size: str = "small") -> SceneObject:
    return SceneObject("car", colour, size, box, image_size=64)


# ------------------------------------------------------------------------------------------------
# Determinism
# ------------------------------------------------------------------------------------------------


def test_same_seed_split_index_gives_identical_samples() -> None:
    first, second = SyntheticSceneGenerator(seed=7), SyntheticSceneGenerator(seed=7)
    for split in SPLITS:
        for index in (0, 1, 17, 999):
            a, b = first.sample(split, index), second.sample(split, index)
            assert a.image.tobytes() == b.image.tobytes()
            assert a.mask.tobytes() == b.mask.tobytes()
            assert a.sentence == b.sentence
            assert a.objects == b.objects and a.target == b.target and a.expression == b.expression
    # Order of calls must not matter: a sample is a function of (seed, split, index) only.
    assert (
        first.sample("val", 3).image.tobytes()
        == SyntheticSceneGenerator(seed=7).sample("val", 3).image.tobytes()
    )


def test_different_seeds_and_splits_differ() -> None:
    base, other_seed = SyntheticSceneGenerator(seed=0), SyntheticSceneGenerator(seed=1)
    for index in range(5):
        reference = base.sample("train", index).image
        assert not np.array_equal(reference, other_seed.sample("train", index).image)
        assert not np.array_equal(reference, base.sample("val", index).image)
        assert not np.array_equal(base.sample("val", index).image, base.sample("test", index).image)


def test_sample_ids_name_split_and_index(generator: SyntheticSceneGenerator) -> None:
    assert generator.sample("test", 42).sample_id == "synthetic-test-000042"


# ------------------------------------------------------------------------------------------------
# Exactly one referent, and the mask is the referent
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("split", SPLITS)
def test_every_expression_has_exactly_one_referent(
    samples: dict[str, list[SyntheticSample]], split: str
) -> None:
    for sample in samples[split]:
        expression = sample.expression
        assert referents(sample.objects, expression) == [sample.target], sample.sentence
        if expression.anchor is not None:
            assert len(referents(sample.objects, Expression(expression.anchor))) == 1, sample.sentence
        assert sample.sentence == expression.text
        assert sample.expression_type == expression.kind
        assert sample.category == sample.objects[sample.target].category == expression.category
        assert 3 <= len(sample.objects) <= 6


@pytest.mark.parametrize("split", SPLITS)
def test_mask_is_the_rendered_referent(samples: dict[str, list[SyntheticSample]], split: str) -> None:
    for sample in samples[split][:200]:
        assert sample.image.shape == (64, 64, 3) and sample.image.dtype == np.uint8
        assert sample.mask.shape == (64, 64) and sample.mask.dtype == bool
        assert sample.mask.any()
        assert np.array_equal(sample.mask, object_mask(sample.objects[sample.target]))
        x0, y0, x1, y1 = sample.objects[sample.target].box
        assert not sample.mask[:y0].any() and not sample.mask[y1:].any()
        assert not sample.mask[:, :x0].any() and not sample.mask[:, x1:].any()
        for i, obj in enumerate(sample.objects):
            if i != sample.target:
                assert not (object_mask(obj) & sample.mask).any(), "objects must not overlap"


def test_colour_words_match_the_pixels(samples: dict[str, list[SyntheticSample]]) -> None:
    """The referent's median colour is nearer its own colour word than any other its category can take."""
    for sample in samples["train"][:300]:
        obj = sample.objects[sample.target]
        # the interior (mask eroded by one pixel): outlines such as a pool's coping are another colour
        m = sample.mask
        interior = m.copy()
        interior[1:] &= m[:-1]
        interior[:-1] &= m[1:]
        interior[:, 1:] &= m[:, :-1]
        interior[:, :-1] &= m[:, 1:]
        median = np.median(sample.image[interior if interior.any() else m].astype(float), axis=0)

        def distance(colour: str, median: np.ndarray = median, category: str = obj.category) -> float:
            return float(np.abs(median - np.asarray(colour_rgb(category, colour))).max())

        own = distance(obj.colour)
        assert own < 40, (obj, median)
        others = [c for c in CATEGORY_STYLES[obj.category].colours if c != obj.colour]
        assert all(own < distance(c) for c in others), (obj, median)


def test_objects_keep_a_gap_and_stay_inside(samples: dict[str, list[SyntheticSample]]) -> None:
    for sample in samples["val"][:200]:
        boxes = [obj.box for obj in sample.objects]
        for i, (ax0, ay0, ax1, ay1) in enumerate(boxes):
            assert 0 <= ax0 < ax1 <= 64 and 0 <= ay0 < ay1 <= 64
            for bx0, by0, bx1, by1 in boxes[i + 1 :]:
                apart = bx0 >= ax1 + 2 or ax0 >= bx1 + 2 or by0 >= ay1 + 2 or ay0 >= by1 + 2
                assert apart, (boxes, sample.sentence)


# ------------------------------------------------------------------------------------------------
# `referents` on hand-made scenes: the uniqueness check is not vacuous
# ------------------------------------------------------------------------------------------------


def test_referents_reports_every_match_of_an_ambiguous_expression() -> None:
    objects = [
        _car((5, 5, 10, 8)),
        _car((40, 40, 47, 44), size="large"),
        SceneObject("building", "gray", "large", (20, 20, 34, 32), image_size=64),
    ]
    assert referents(objects, Expression(Description("car", colour="red"))) == [0, 1]
    assert referents(objects, Expression(Description("car"))) == [0, 1]
    assert referents(objects, Expression(Description("car", colour="red", size="large"))) == [1]
    assert referents(objects, Expression(Description("car", colour="blue"))) == []
    assert referents(objects, Expression(Description("building"))) == [2]


def test_relation_semantics_follow_image_coordinates() -> None:
    # x grows to the right, y grows downward: "above" means a smaller y.
    objects = [
        SceneObject("building", "gray", "large", (24, 24, 40, 38), image_size=64),
        _car((6, 29, 11, 32)),  # left of the building
        _car((52, 29, 57, 32)),  # right of it
        _car((30, 4, 35, 7)),  # above it
        SceneObject("storage tank", "white", "small", (29, 52, 35, 58), image_size=64),  # below it
    ]
    building = Description("building")

    def cars(relation: str, anchor: Description = building) -> list[int]:
        return referents(objects, Expression(Description("car"), relation, anchor))

    assert cars("left_of") == [1]
    assert cars("right_of") == [2]
    assert cars("above") == [3]
    assert cars("below") == []
    assert referents(objects, Expression(Description("storage tank"), "below", building)) == [4]
    assert cars("above", Description("storage tank")) == [1, 2, 3]
    assert cars("below", Description("storage tank")) == []
    assert referents(objects, Expression(Description("car", location="leftmost"))) == [1]
    assert referents(objects, Expression(Description("car", location="topmost"))) == [3]
    # Regions are read generously: cars near the middle line could be meant by either side.
    assert referents(objects, Expression(Description("car", location="top"))) == [1, 2, 3]
    assert referents(objects, Expression(Description("car", location="right"))) == [2, 3]
    assert referents(objects, Expression(Description("car", location="top right"))) == [2, 3]


def test_position_words_are_ambiguous_inside_the_margin() -> None:
    objects = [_car((10, 10, 15, 13)), _car((12, 40, 17, 43)), _car((50, 20, 55, 23))]
    # The two left cars are 2 px apart in x: "leftmost" could mean either of them.
    assert referents(objects, Expression(Description("car", location="leftmost"))) == [0, 1]
    assert referents(objects, Expression(Description("car", location="left"))) == [0, 1]
    assert referents(objects, Expression(Description("car", location="rightmost"))) == [2]
    # "next to" the building: both cars near it could be meant.
    near = [
        _car((2, 2, 7, 5)),
        _car((2, 20, 7, 23)),
        SceneObject("building", "red", "small", (9, 8, 17, 16), 64),
    ]
    assert referents(near, Expression(Description("car"), "next_to", Description("building"))) == [0, 1]


def test_expression_structure_is_validated() -> None:
    with pytest.raises(ValueError, match="kind"):
        Expression(Description("car", colour="red"), kind="category")
    with pytest.raises(ValueError, match="anchor"):
        Expression(Description("car"), relation="left_of")
    with pytest.raises(ValueError, match="colour"):
        Description("car", colour="purple")
    assert Expression(Description("car", colour="red"), "left_of", Description("building")).kind == "relation"
    assert Expression(Description("car", size="small")).text == "the small car"


# ------------------------------------------------------------------------------------------------
# Pinned difficulty
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("split", SPLITS)
def test_difficulty_report_meets_the_pinned_numbers(generator: SyntheticSceneGenerator, split: str) -> None:
    report = difficulty_report(generator, split, 1000)
    assert report.num_samples == 1000
    assert report.objects_per_scene["min"] >= 3 and report.objects_per_scene["max"] <= 6
    assert report.num_categories_seen >= 6
    assert report.distractor_share >= 0.8
    assert report.relation_share >= 0.2
    assert all(report.type_shares[kind] > 0.05 for kind in EXPRESSION_TYPES)
    assert 0.1 <= report.type_shares["category"] <= 0.25
    assert 0.4 <= report.type_shares["attribute"] <= 0.6
    assert report.relation_needed_share >= 0.9
    assert sum(report.category_shares.values()) == pytest.approx(1.0)
    assert set(report.category_shares) == set(CATEGORIES)
    json.dumps(report.as_dict())


def test_difficulty_holds_at_the_reference_object_size() -> None:
    report = difficulty_report(SyntheticSceneGenerator(seed=0), "test", 500)
    assert report.distractor_share >= 0.8 and report.relation_share >= 0.2
    assert report.objects_per_scene["min"] >= 3 and report.objects_per_scene["max"] <= 6


def test_type_weights_steer_the_mix() -> None:
    only_attributes = SyntheticSceneGenerator(distractor_rate=1.0, type_weights={"attribute": 1.0})
    assert {only_attributes.sample("train", i).expression_type for i in range(50)} == {"attribute"}
    only_categories = SyntheticSceneGenerator(distractor_rate=0.0, type_weights={"category": 1.0})
    assert {only_categories.sample("train", i).expression_type for i in range(50)} == {"category"}
    relations = SyntheticSceneGenerator(distractor_rate=1.0, type_weights={"relation": 1.0})
    kinds = [relations.sample("train", i).expression_type for i in range(100)]
    assert kinds.count("relation") >= 95


def test_object_scale_enlarges_objects_and_keeps_one_referent() -> None:
    plain, larger = SyntheticSceneGenerator(seed=5), SyntheticSceneGenerator(seed=5, object_scale=1.4)
    areas = {1.0: [], 1.4: []}
    for index in range(100):
        for scale, generator in ((1.0, plain), (1.4, larger)):
            sample = generator.sample("train", index)
            assert referents(sample.objects, sample.expression) == [sample.target]
            areas[scale].append(int(sample.mask.sum()))
    ratio = np.median(areas[1.4]) / np.median(areas[1.0])
    assert 1.6 < ratio < 2.4, ratio  # area grows with the square of the scale


@pytest.mark.parametrize("image_size", [32, 96])
def test_other_image_sizes(image_size: int) -> None:
    generator = SyntheticSceneGenerator(image_size=image_size, seed=3)
    for index in range(30):
        sample = generator.sample("train", index)
        assert sample.image.shape == (image_size, image_size, 3)
        assert referents(sample.objects, sample.expression) == [sample.target]
        assert sample.mask.any()


# ------------------------------------------------------------------------------------------------
# Torch dataset and export
# ------------------------------------------------------------------------------------------------


def test_dataset_items(generator: SyntheticSceneGenerator) -> None:
    dataset = SyntheticRefSegDataset(generator, split="val", length=4)
    assert len(dataset) == 4
    item = dataset[3]
    assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.float32
    assert item["image"].min() >= 0.0 and item["image"].max() <= 1.0
    assert item["mask"].shape == (1, 64, 64) and item["mask"].dtype == torch.float32
    assert set(item["mask"].unique().tolist()) <= {0.0, 1.0} and item["mask"].sum() > 0
    assert item["original_size"] == (64, 64)
    assert item["sample_id"] == "synthetic-val-000003"
    assert item["expression_type"] in EXPRESSION_TYPES and item["category"] in CATEGORIES
    assert isinstance(item["sentence"], str) and item["sentence"]
    sample = generator.sample("val", 3)
    assert torch.equal(item["mask"][0].bool(), torch.from_numpy(sample.mask))
    for bad in (4, -1, 100):
        with pytest.raises(IndexError, match=rf"{bad}.*length 4"):
            dataset[bad]


def test_export_round_trip(generator: SyntheticSceneGenerator, tmp_path: Path) -> None:
    paths = export_unified_jsonl(generator, split_sizes={"train": 3, "test": 2}, out_dir=tmp_path)
    assert set(paths) == {"train", "test"}
    for split, path in paths.items():
        records = [json.loads(line) for line in path.read_text().splitlines()]
        assert len(records) == (3 if split == "train" else 2)
        for index, record in enumerate(records):
            sample = generator.sample(split, index)
            assert record["split"] == split and record["image_id"] == sample.sample_id
            assert record["sent"] == sample.sentence
            assert record["category_name"] == sample.category
            assert record["expression_type"] == sample.expression_type
            rle = dict(record["segmentation"], counts=record["segmentation"]["counts"].encode())
            assert np.array_equal(mask_utils.decode(rle).astype(bool), sample.mask)
            image = np.asarray(Image.open(tmp_path / "images" / record["file_name"]))
            assert np.array_equal(image, sample.image)
            ys, xs = np.nonzero(sample.mask)
            assert record["bbox"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    leftovers = [p.name for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


# ------------------------------------------------------------------------------------------------
# Argument validation
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"image_size": 16}, "image_size"),
        ({"seed": -1}, "seed"),
        ({"min_objects": 1}, "min_objects"),
        ({"min_objects": 5, "max_objects": 4}, "max_objects"),
        ({"max_objects": 12}, "max_objects"),
        ({"distractor_rate": 1.5}, "distractor_rate"),
        ({"type_weights": {"colour": 1.0}}, "type_weights"),
        ({"type_weights": {"category": -1.0}}, "type_weights"),
        ({"type_weights": {"category": 0.0}}, "type_weights"),
        ({"object_scale": 3.0}, "object_scale"),
    ],
)
def test_bad_generator_arguments(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        SyntheticSceneGenerator(**kwargs)


def test_bad_call_arguments(generator: SyntheticSceneGenerator, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="split"):
        generator.sample("training", 0)
    with pytest.raises(ValueError, match="index"):
        generator.sample("train", -1)
    with pytest.raises(ValueError, match="split"):
        SyntheticRefSegDataset(generator, split="dev", length=3)
    with pytest.raises(ValueError, match="length"):
        SyntheticRefSegDataset(generator, split="train", length=-1)
    with pytest.raises(ValueError, match="split_sizes"):
        export_unified_jsonl(generator, split_sizes={"dev": 1}, out_dir=tmp_path)
    with pytest.raises(ValueError, match="num_samples"):
        difficulty_report(generator, "train", 0)
