"""Procedural referring-segmentation scenes: the project's default, download-free benchmark.

A scene is 3–6 non-overlapping top-down objects (buildings, cars, storage tanks, ships on water,
trees, tennis courts, swimming pools, planes) on textured ground. Each sample refers to exactly one
of them with a short expression of one of three types:

* ``category`` – the category alone suffices ("the ship");
* ``attribute`` – colour, size, image region or a superlative is needed ("the red car",
  "the large building", "car at the top left", "the leftmost tree");
* ``relation`` – the target is located through another object ("the car left of the large building").

Expressions are structured (`Expression`, in `synthetic_language`, which also holds their meaning
and their words) and `referents` evaluates them against the scene, so the "exactly one referent"
guarantee is checked, not assumed. How scenes look lives in `synthetic_render`.

Every sample is a pure function of ``(seed, split, index)``.
"""

from __future__ import annotations

import json
import math
import zlib
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from torch.utils.data import Dataset

from rsrefseg.data.synthetic_language import (
    EXPRESSION_TYPES,
    LOCATIONS,
    RELATIONS,
    SUPERLATIVES,
    Description,
    Expression,
    attribute_options,
    evaluate_description,
    expression_text,
    matching,
    pick,
    randint,
    referents,
    relation_options,
)
from rsrefseg.data.synthetic_render import (
    CATEGORIES,
    CATEGORY_STYLES,
    SIZE_CLASSES,
    SceneObject,
    SceneRenderer,
    object_mask,
    scaled,
)
from rsrefseg.io import atomic_open

__all__ = [
    "CATEGORIES",
    "DEFAULT_TYPE_WEIGHTS",
    "EXPRESSION_TYPES",
    "LOCATIONS",
    "RELATIONS",
    "SPLITS",
    "Description",
    "DifficultyReport",
    "Expression",
    "SceneObject",
    "SyntheticRefSegDataset",
    "SyntheticSample",
    "SyntheticSceneGenerator",
    "difficulty_report",
    "export_unified_jsonl",
    "referents",
]

SPLITS = ("train", "val", "test")
DEFAULT_TYPE_WEIGHTS: Mapping[str, float] = {"category": 0.15, "attribute": 0.53, "relation": 0.32}


_SPLIT_CODES = {split: zlib.crc32(split.encode()) for split in SPLITS}
_MAX_ATTEMPTS, _ATTEMPTS_PER_TYPE = 40, 8
_PLACEMENT_TRIES = 40
_SECOND_DISTRACTOR_RATE = 0.35  # scenes with a distractor have 2 or 3 objects of the target's category
_CLONE_RATE = {"category": 0.0, "attribute": 0.25, "relation": 0.6}  # distractors copying colour and size


@dataclass(eq=False)  # holds arrays; compare fields explicitly
class SyntheticSample:
    """One generated triplet (image, sentence, mask) and the scene behind it.

    Attributes:
        image: ``H×W×3`` uint8 RGB image.
        mask: ``H×W`` bool mask of the referent's pixels.
        sentence: The referring expression.
        expression_type: One of `EXPRESSION_TYPES`.
        category: The referent's category.
        sample_id: ``"synthetic-<split>-<index:06d>"``.
        objects: Every object of the scene.
        expression: The structured expression; ``referents(objects, expression) == [target]``.
        target: Index of the referent in ``objects``.
    """

    image: np.ndarray
    mask: np.ndarray
    sentence: str
    expression_type: str
    category: str
    sample_id: str
    objects: tuple[SceneObject, ...]
    expression: Expression
    target: int


# --------------------------------------------------------------------------------------------------
# The generator
# --------------------------------------------------------------------------------------------------


class SyntheticSceneGenerator:
    """Seeded generator of synthetic referring-segmentation samples.

    The expected type mix is ``type_weights`` (normalised), realised as closely as the scene
    composition allows: a 'category' expression is only honest when the target is alone in its
    category, which happens in a share ``1 - distractor_rate`` of the scenes; the remaining
    attribute/relation mass goes to the scenes with distractors.

    Args:
        image_size: Side of the square images in pixels (at least 32).
        seed: Non-negative seed; with ``(split, index)`` it fixes every sample.
        min_objects: Fewest objects per scene (at least 2).
        max_objects: Most objects per scene (at most 8), drawn uniformly in between.
        distractor_rate: Share of scenes with 2–3 objects of the target's category.
        type_weights: Wanted share of each of `EXPRESSION_TYPES` (missing types weigh 0);
            defaults to `DEFAULT_TYPE_WEIGHTS`.

    Raises:
        ValueError: If an argument is out of range.
    """

    def __init__(
        self,
        *,
        image_size: int = 64,
        seed: int = 0,
        min_objects: int = 3,
        max_objects: int = 6,
        distractor_rate: float = 0.85,
        type_weights: Mapping[str, float] | None = None,
        object_scale: float = 1.0,
    ) -> None:
        if not (isinstance(object_scale, int | float) and 0.5 <= object_scale <= 2.0):
            raise ValueError(f"object_scale={object_scale!r}; expected a number in [0.5, 2]")
        if not isinstance(image_size, int) or image_size < 32:
            raise ValueError(f"image_size={image_size!r}; expected an integer >= 32")
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed={seed!r}; expected a non-negative integer")
        if not isinstance(min_objects, int) or min_objects < 2:
            raise ValueError(f"min_objects={min_objects!r}; expected an integer >= 2")
        if not isinstance(max_objects, int) or not min_objects <= max_objects <= 8:
            raise ValueError(
                f"max_objects={max_objects!r}; expected an integer in [min_objects={min_objects}, 8]"
            )
        if not 0.0 <= distractor_rate <= 1.0:
            raise ValueError(f"distractor_rate={distractor_rate!r}; expected a number in [0, 1]")
        weights = dict(DEFAULT_TYPE_WEIGHTS if type_weights is None else type_weights)
        unknown = sorted(set(weights) - set(EXPRESSION_TYPES))
        if unknown:
            raise ValueError(
                f"type_weights has unknown types {unknown}; expected keys among {EXPRESSION_TYPES}"
            )
        if any(not math.isfinite(w) or w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise ValueError(
                f"type_weights={weights}; expected finite non-negative weights with a positive sum"
            )
        self.image_size = image_size
        self.object_scale = float(object_scale)
        self.seed = seed
        self.min_objects = min_objects
        self.max_objects = max_objects
        self.distractor_rate = float(distractor_rate)
        self.type_weights = {kind: float(weights.get(kind, 0.0)) for kind in EXPRESSION_TYPES}
        self._type_probs = _conditional_type_probs(self.type_weights, self.distractor_rate)
        self._gap = max(2, scaled(2, image_size))  # keeps one-pixel shadows off the neighbours
        self._renderer = SceneRenderer(image_size=image_size, seed=seed)

    def sample(self, split: str, index: int) -> SyntheticSample:
        """Generate sample ``index`` of ``split``.

        Args:
            split: One of `SPLITS`; each split draws from its own stream.
            index: Non-negative sample index.

        Returns:
            The sample; a deterministic function of ``(seed, split, index)``.

        Raises:
            ValueError: If the split is unknown or the index negative.
        """
        if split not in _SPLIT_CODES:
            raise ValueError(f"split={split!r} is unknown; expected one of {SPLITS}")
        if not isinstance(index, (int, np.integer)) or index < 0:
            raise ValueError(f"index={index!r}; expected a non-negative integer")
        # SeedSequence hashes the entropy words, unlike Python's per-process salted hash().
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, _SPLIT_CODES[split], int(index)]))
        distractor = bool(rng.random() < self.distractor_rate)
        cdf = np.cumsum(self._type_probs[distractor])
        wanted = EXPRESSION_TYPES[min(int(np.searchsorted(cdf, rng.random(), side="right")), len(cdf) - 1)]
        fallback = ("attribute", "relation") if distractor else ("category",)
        plan = [wanted, *(kind for kind in fallback if kind != wanted)]
        for attempt in range(_MAX_ATTEMPTS):
            kind = plan[min(attempt // _ATTEMPTS_PER_TYPE, len(plan) - 1)]
            layout = self._layout(rng, distractor=distractor, kind=kind)
            if layout is None:
                continue
            objects, candidates = layout
            chosen = _express(objects, candidates, kind, rng)
            if chosen is None:
                continue
            target, expression = chosen
            return SyntheticSample(
                image=self._renderer.render(objects, rng),
                mask=object_mask(objects[target]),
                sentence=expression.text,
                expression_type=expression.kind,
                category=objects[target].category,
                sample_id=f"synthetic-{split}-{int(index):06d}",
                objects=objects,
                expression=expression,
                target=target,
            )
        raise RuntimeError(
            f"no valid scene for split={split!r}, index={index} after {_MAX_ATTEMPTS} attempts; "
            f"max_objects={self.max_objects} may not fit into image_size={self.image_size}"
        )

    def _layout(
        self, rng: np.random.Generator, *, distractor: bool, kind: str
    ) -> tuple[tuple[SceneObject, ...], list[int]] | None:
        """Place new objects; returns them and the target candidates, or None if they do not fit."""
        size = self.image_size
        count = self.min_objects + randint(rng, self.max_objects - self.min_objects + 1)
        category = CATEGORIES[randint(rng, len(CATEGORIES))]
        same = 1
        if distractor:
            same = 3 if count >= 3 and rng.random() < _SECOND_DISTRACTOR_RATE else 2
        others = [c for c in CATEGORIES if c != category]
        categories = [category] * same + [others[randint(rng, len(others))] for _ in range(count - same)]
        specs = [self._appearance(rng, c) for c in categories]
        if distractor and rng.random() < _CLONE_RATE[kind]:
            specs[1:same] = [specs[0]] * (same - 1)
        occupied = np.zeros((size, size), dtype=bool)
        placed: list[SceneObject] = []
        gap = self._gap
        for cat, colour, size_class, width, height, orientation, shape_seed in sorted(
            specs, key=lambda s: -s[3] * s[4]
        ):
            margin = (
                scaled(CATEGORY_STYLES[cat].context_margin, size)
                if CATEGORY_STYLES[cat].context_margin
                else 0
            )
            fw, fh = width + 2 * margin, height + 2 * margin
            if fw > size or fh > size:
                return None
            tries = rng.random(2 * _PLACEMENT_TRIES).tolist()
            for k in range(_PLACEMENT_TRIES):
                fx, fy = int(tries[2 * k] * (size - fw + 1)), int(tries[2 * k + 1] * (size - fh + 1))
                if not occupied[max(0, fy - gap) : fy + fh + gap, max(0, fx - gap) : fx + fw + gap].any():
                    break
            else:
                return None
            occupied[fy : fy + fh, fx : fx + fw] = True
            box = (fx + margin, fy + margin, fx + margin + width, fy + margin + height)
            placed.append(SceneObject(cat, colour, size_class, box, size, orientation, shape_seed))
        objects = tuple(placed[i] for i in rng.permutation(len(placed)).tolist())
        return objects, [i for i, obj in enumerate(objects) if obj.category == category]

    def _appearance(
        self, rng: np.random.Generator, category: str
    ) -> tuple[str, str, str, int, int, str, int]:
        """Colour, size class, pixel width and height, orientation and shape seed of a new object."""
        style = CATEGORY_STYLES[category]
        u_colour, u_size, u_long, u_short, u_orient, u_seed = rng.random(6).tolist()
        colour = style.colours[int(u_colour * len(style.colours))]
        size_class = SIZE_CLASSES[int(u_size * 2)]
        (long_lo, long_hi), (short_lo, short_hi) = style.small if size_class == "small" else style.large
        scale = self.image_size * self.object_scale
        long_side = scaled(long_lo + int(u_long * (long_hi - long_lo + 1)), scale)
        short_side = scaled(short_lo + int(u_short * (short_hi - short_lo + 1)), scale)
        shape_seed = int(u_seed * (1 << 16))
        if style.square:
            return category, colour, size_class, long_side, long_side, "horizontal", shape_seed
        if u_orient < 0.5:
            return category, colour, size_class, long_side, short_side, "horizontal", shape_seed
        return category, colour, size_class, short_side, long_side, "vertical", shape_seed


def _conditional_type_probs(weights: Mapping[str, float], distractor_rate: float) -> dict[bool, np.ndarray]:
    """P(type | scene has a distractor) for False/True whose mixture matches ``weights`` where possible.

    'category' is only possible without a distractor; it takes up to all of those scenes, and
    attribute/relation share the rest so that their overall shares keep the wanted ratio.
    """
    total = sum(weights.values())
    w_cat, w_attr, w_rel = (weights[kind] / total for kind in EXPRESSION_TYPES)
    alone = 1.0 - distractor_rate
    p_cat = min(1.0, w_cat / alone) if alone > 0 else 1.0
    rest = w_attr + w_rel
    attr_ratio = w_attr / rest if rest > 0 else 1.0
    without = np.array([p_cat, (1 - p_cat) * attr_ratio, (1 - p_cat) * (1 - attr_ratio)])
    attr = max(0.0, w_attr - alone * without[1])
    rel = max(0.0, w_rel - alone * without[2])
    with_distractor = (
        np.array([0.0, attr, rel]) / (attr + rel) if attr + rel > 0 else np.array([0.0, 1.0, 0.0])
    )
    return {False: without, True: with_distractor}


def _facet(description: Description) -> tuple[bool, bool, str]:
    """Which kinds of attribute a description uses: colour, size, and 'region'/'superlative'/''."""
    location = description.location
    where = "" if location is None else "superlative" if location in SUPERLATIVES else "region"
    return description.colour is not None, description.size is not None, where


def _express(
    objects: tuple[SceneObject, ...], candidates: list[int], kind: str, rng: np.random.Generator
) -> tuple[int, Expression] | None:
    """Pick a target among the candidates and its simplest unambiguous expression of ``kind``."""
    for target in rng.permutation(candidates).tolist():
        relation = anchor = None
        if kind == "category":
            subject = Description(objects[target].category)
            if matching(objects, subject) != [target]:
                continue
        elif kind == "attribute":
            options = attribute_options(objects, target)
            if not options:
                continue
            # Choose the kind of attribute first so that the many location words do not crowd out colour/size.
            facet = pick(sorted({_facet(d) for d in options}), rng)
            subject = pick([d for d in options if _facet(d) == facet], rng)
        else:
            triples = relation_options(objects, target)
            if not triples:
                continue
            relation = pick(sorted({r for _, r, _ in triples}), rng)
            subject, _, anchor = pick([t for t in triples if t[1] == relation], rng)
        if evaluate_description(objects, subject, relation, anchor) != [target]:
            raise RuntimeError(f"internal error: ambiguous {kind} expression was about to be emitted")
        text = expression_text(subject, relation, anchor, rng)
        return target, Expression(subject, relation, anchor, text=text, kind=kind)
    return None


# --------------------------------------------------------------------------------------------------
# Difficulty report, torch dataset, export
# --------------------------------------------------------------------------------------------------


@dataclass
class DifficultyReport:
    """Measured difficulty of ``num_samples`` samples of one split.

    Attributes:
        split: The split measured.
        num_samples: Samples measured.
        objects_per_scene: ``{"min", "mean", "max"}`` objects per scene.
        num_categories_seen: Distinct categories among all objects.
        distractor_share: Share of samples with another object of the referent's category.
        relation_share: Share of 'relation' expressions.
        type_shares: Share of each expression type.
        category_shares: Share of each referent category.
        relation_needed_share: Among relation expressions, the share whose subject phrase alone
            (the sentence without its relation) would be ambiguous.
        relation_irreplaceable_share: Among relation expressions, the share whose referent no
            relation-free expression of this grammar (colour, size, region, superlative) could single
            out. Low by design: the dead zones that keep position words unambiguous also separate
            most look-alike objects by position.
        vocabulary_size: Distinct words over all sentences.
        mean_sentence_words: Mean words per sentence.
    """

    split: str
    num_samples: int
    objects_per_scene: dict[str, float]
    num_categories_seen: int
    distractor_share: float
    relation_share: float
    type_shares: dict[str, float]
    category_shares: dict[str, float]
    relation_needed_share: float
    relation_irreplaceable_share: float
    vocabulary_size: int
    mean_sentence_words: float

    def as_dict(self) -> dict[str, Any]:
        """The report as plain JSON-serialisable values."""
        return asdict(self)


def difficulty_report(generator: SyntheticSceneGenerator, split: str, num_samples: int) -> DifficultyReport:
    """Generate samples ``0 … num_samples - 1`` of ``split`` and measure their difficulty.

    Args:
        generator: The generator to measure.
        split: One of `SPLITS`.
        num_samples: How many samples to measure (at least 1).

    Returns:
        The report.

    Raises:
        ValueError: If ``num_samples`` < 1 or the split is unknown.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples={num_samples!r}; expected at least 1")
    counts, types, categories, seen, words = [], Counter(), Counter(), set(), Counter()
    distractors = relations = relations_needed = relations_irreplaceable = 0
    for index in range(num_samples):
        sample = generator.sample(split, index)
        counts.append(len(sample.objects))
        types[sample.expression_type] += 1
        categories[sample.category] += 1
        seen.update(obj.category for obj in sample.objects)
        words.update(sample.sentence.split())
        distractors += sum(obj.category == sample.category for obj in sample.objects) >= 2
        if sample.expression_type == "relation":
            relations += 1
            relations_needed += len(matching(sample.objects, sample.expression.subject)) >= 2
            relations_irreplaceable += not attribute_options(sample.objects, sample.target)
    return DifficultyReport(
        split=split,
        num_samples=num_samples,
        objects_per_scene={"min": min(counts), "mean": float(np.mean(counts)), "max": max(counts)},
        num_categories_seen=len(seen),
        distractor_share=distractors / num_samples,
        relation_share=relations / num_samples,
        type_shares={kind: types[kind] / num_samples for kind in EXPRESSION_TYPES},
        category_shares={cat: categories[cat] / num_samples for cat in CATEGORIES},
        relation_needed_share=relations_needed / relations if relations else 0.0,
        relation_irreplaceable_share=relations_irreplaceable / relations if relations else 0.0,
        vocabulary_size=len(words),
        mean_sentence_words=sum(words.values()) / num_samples,
    )


class SyntheticRefSegDataset(Dataset):
    """Map-style dataset of `length` samples of one split, generated on the fly.

    Args:
        generator: The scene generator.
        split: One of `SPLITS`.
        length: Number of samples (indices ``0 … length - 1``).

    Raises:
        ValueError: If the split is unknown or ``length`` negative.
    """

    def __init__(self, generator: SyntheticSceneGenerator, *, split: str, length: int) -> None:
        if split not in SPLITS:
            raise ValueError(f"split={split!r} is unknown; expected one of {SPLITS}")
        if not isinstance(length, int) or length < 0:
            raise ValueError(f"length={length!r}; expected a non-negative integer")
        self.generator = generator
        self.split = split
        self.length = length

    def describe(self, *, max_samples: int = 1000) -> dict[str, Any]:
        """The split's difficulty report (on its first ``max_samples`` samples), as a plain dict."""
        return difficulty_report(self.generator, self.split, min(self.length, max_samples)).as_dict()

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Sample ``index`` as tensors.

        Returns:
            ``image``: float32 ``3×H×W`` in [0, 1]; ``mask``: float32 ``1×H×W`` in {0, 1};
            ``sentence``, ``sample_id``, ``expression_type``, ``category``: str;
            ``original_size``: ``(H, W)``; and, with the keys of `ReferringDataset` items (so that
            evaluation treats every dataset alike), ``valid``: bool ``1×H×W`` all True (no padding),
            ``content_size``: ``(H, W)``, ``original_mask``: bool ``H×W``.

        Raises:
            IndexError: If ``index`` is outside ``[0, length)``.
        """
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} is out of range for a dataset of length {self.length}")
        sample = self.generator.sample(self.split, index)
        image = torch.from_numpy(sample.image).permute(2, 0, 1).float().div_(255.0)
        original_mask = torch.from_numpy(sample.mask)
        size = tuple(sample.mask.shape)
        return {
            "image": image,
            "mask": original_mask[None].float(),
            "valid": torch.ones_like(original_mask[None]),
            "sentence": sample.sentence,
            "sample_id": sample.sample_id,
            "expression_type": sample.expression_type,
            "category": sample.category,
            "original_size": size,
            "content_size": size,
            "original_mask": original_mask,
        }


def export_unified_jsonl(
    generator: SyntheticSceneGenerator, *, split_sizes: Mapping[str, int], out_dir: Path
) -> dict[str, Path]:
    """Write samples as the unified JSONL + PNG layout (docs/data.md §7; the command: docs/data.md §11).

    Writes ``out_dir/images/<sample_id>.png`` and ``out_dir/<split>.jsonl``, one object per line
    with ``split, sample_id, image_id, sent, file_name`` (relative to ``images/``), ``height, width``,
    ``segmentation`` (one COCO RLE with str counts), ``category_name, expression_type`` and ``bbox``
    ``[x1, y1, x2, y2]`` of the mask (``x2``/``y2`` exclusive). Every file is written atomically.
    `rsrefseg.data.readers.read_jsonl` (``data=jsonl``) reads it back with the same sample ids.

    Args:
        generator: The scene generator.
        split_sizes: Number of samples per split name.
        out_dir: Output folder (created if missing).

    Returns:
        The JSONL path of each split.

    Raises:
        ValueError: If a split is unknown or a size negative.
    """
    for split, size in split_sizes.items():
        if split not in SPLITS:
            raise ValueError(f"split_sizes has unknown split {split!r}; expected names among {SPLITS}")
        if not isinstance(size, int) or size < 0:
            raise ValueError(f"split_sizes[{split!r}]={size!r}; expected a non-negative integer")
    out_dir = Path(out_dir)
    image_dir = out_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, size in split_sizes.items():
        lines = []
        for index in range(size):
            sample = generator.sample(split, index)
            file_name = f"{sample.sample_id}.png"
            _write_atomic(
                image_dir / file_name, lambda fh, s=sample: Image.fromarray(s.image).save(fh, format="PNG")
            )
            rle = mask_utils.encode(np.asfortranarray(sample.mask.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            ys, xs = np.nonzero(sample.mask)
            record = {
                "split": split,
                "sample_id": sample.sample_id,
                "image_id": sample.sample_id,
                "sent": sample.sentence,
                "file_name": file_name,
                "height": int(sample.mask.shape[0]),
                "width": int(sample.mask.shape[1]),
                "segmentation": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"]},
                "category_name": sample.category,
                "expression_type": sample.expression_type,
                "bbox": [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1],
            }
            lines.append(json.dumps(record) + "\n")
        path = out_dir / f"{split}.jsonl"
        payload = "".join(lines).encode("utf-8")
        _write_atomic(path, lambda fh, data=payload: fh.write(data))
        written[split] = path
    return written


def _write_atomic(path: Path, write: Callable[[Any], object]) -> None:
    """Write ``path`` through a temporary file in the same folder, then rename it into place."""
    with atomic_open(path) as handle:
        write(handle)
