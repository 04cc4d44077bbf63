"""Procedural referring-segmentation scenes: the project's default, download-free benchmark.

A scene is 3–6 non-overlapping top-down objects (buildings, cars, storage tanks, ships on water,
trees, tennis courts, swimming pools, planes) on textured ground. Each sample refers to exactly one
of them with a short expression of one of three types:

* ``category`` – the category alone suffices ("the ship");
* ``attribute`` – colour, size, image region or a superlative is needed ("the red car",
  "the large building", "car at the top left", "the leftmost tree");
* ``relation`` – the target is located through another object ("the car left of the large building").

Expressions are structured (`Expression`) and `referents` evaluates them against the scene, so the
"exactly one referent" guarantee is checked, not assumed. Judging positions uses two thresholds:
a strict one for what the generator is willing to say about the target and a loose one for which
objects a reader could possibly take the words to mean; an expression is only emitted when no other
object is even possibly meant. Image coordinates: x to the right, y downward ("above" = smaller y).

Every sample is a pure function of ``(seed, split, index)``.
"""

from __future__ import annotations

import json
import math
import zlib
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from torch.utils.data import Dataset

from rsrefseg.data.synthetic_render import (
    CATEGORIES,
    CATEGORY_STYLES,
    COLOUR_RGB,
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

EXPRESSION_TYPES = ("category", "attribute", "relation")
SPLITS = ("train", "val", "test")
REGIONS = ("left", "right", "top", "bottom", "top left", "top right", "bottom left", "bottom right", "center")
SUPERLATIVES = ("leftmost", "rightmost", "topmost", "bottommost")
LOCATIONS = REGIONS + SUPERLATIVES
RELATIONS = ("left_of", "right_of", "above", "below", "next_to")
DEFAULT_TYPE_WEIGHTS: Mapping[str, float] = {"category": 0.15, "attribute": 0.53, "relation": 0.32}

# Position thresholds, in fractions of the image side (object centres unless stated otherwise).
_REGION_STRICT, _REGION_POSSIBLE = 0.40, 0.55  # "left": target centre x < 0.40; others must be >= 0.55
_CENTER_STRICT, _CENTER_POSSIBLE = 0.15, 0.30  # half-width of the central box
_SUPERLATIVE_MARGIN = 0.10  # the runner-up must be this much less extreme
_ALIGNMENT = 0.35  # "left of" also needs the two roughly side by side
_NEAR_STRICT = 0.15  # box-to-box gap the target may have to its "next to" anchor
_NEAR_POSSIBLE, _NEAR_RATIO, _NEAR_SLACK = 0.12, 1.6, 0.03  # who else could be "next to" it

_SPLIT_CODES = {split: zlib.crc32(split.encode()) for split in SPLITS}
_MAX_ATTEMPTS, _ATTEMPTS_PER_TYPE = 40, 8
_PLACEMENT_TRIES = 40
_SECOND_DISTRACTOR_RATE = 0.35  # scenes with a distractor have 2 or 3 objects of the target's category
_CLONE_RATE = {"category": 0.0, "attribute": 0.25, "relation": 0.6}  # distractors copying colour and size


@dataclass(frozen=True)
class Description:
    """A noun phrase without a relation: category plus optional colour, size and location.

    Attributes:
        category: One of `CATEGORIES`.
        colour: A colour name (a key of ``COLOUR_RGB``) or None.
        size: 'small', 'large' or None.
        location: An image region (`REGIONS`, e.g. 'top left') or a superlative (`SUPERLATIVES`,
            e.g. 'leftmost', taken among the objects matching the other fields), or None.
    """

    category: str
    colour: str | None = None
    size: str | None = None
    location: str | None = None

    def __post_init__(self) -> None:
        if self.category not in CATEGORIES:
            raise ValueError(f"category={self.category!r} is unknown; expected one of {CATEGORIES}")
        if self.colour is not None and self.colour not in COLOUR_RGB:
            raise ValueError(f"colour={self.colour!r} is unknown; expected one of {tuple(COLOUR_RGB)}")
        if self.size is not None and self.size not in SIZE_CLASSES:
            raise ValueError(f"size={self.size!r}; expected None or one of {SIZE_CLASSES}")
        if self.location is not None and self.location not in LOCATIONS:
            raise ValueError(f"location={self.location!r}; expected None or one of {LOCATIONS}")

    @property
    def num_attributes(self) -> int:
        """How many of colour, size and location are given."""
        return sum(value is not None for value in (self.colour, self.size, self.location))


@dataclass(frozen=True)
class Expression:
    """A structured referring expression and its text.

    Attributes:
        subject: What the expression is about (the referent's description).
        relation: None, or one of `RELATIONS`: the referent is ``relation`` the anchor.
        anchor: The object the relation is taken to; required with a relation, else None.
        text: The sentence. Left empty, a canonical text is filled in.
        kind: One of `EXPRESSION_TYPES`, implied by the structure (filled in when left empty).
    """

    subject: Description
    relation: str | None = None
    anchor: Description | None = None
    text: str = ""
    kind: str = ""

    def __post_init__(self) -> None:
        if self.relation is not None and self.relation not in RELATIONS:
            raise ValueError(f"relation={self.relation!r}; expected None or one of {RELATIONS}")
        if (self.relation is None) != (self.anchor is None):
            raise ValueError(f"relation={self.relation!r} and anchor={self.anchor!r}: give both or neither")
        implied = "relation" if self.relation else "attribute" if self.subject.num_attributes else "category"
        if self.kind and self.kind != implied:
            raise ValueError(
                f"kind={self.kind!r} contradicts the structure, which is a {implied!r} expression"
            )
        object.__setattr__(self, "kind", implied)
        if not self.text:
            object.__setattr__(self, "text", _expression_text(self.subject, self.relation, self.anchor, None))

    @property
    def category(self) -> str:
        """The referent's category."""
        return self.subject.category


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
# Evaluating expressions
# --------------------------------------------------------------------------------------------------


def referents(objects: Sequence[SceneObject], expression: Expression) -> list[int]:
    """Indices of every object the expression could be taken to mean.

    Position words are read generously (see the module docstring), so a single index means the
    expression is unambiguous, not merely true of one object. With a relation, every object the
    anchor description could mean is tried as the anchor.

    Args:
        objects: The scene's objects.
        expression: The expression to evaluate.

    Returns:
        Sorted object indices; ``[]`` if nothing matches.
    """
    return _referents(objects, expression.subject, expression.relation, expression.anchor)


def _referents(
    objects: Sequence[SceneObject], subject: Description, relation: str | None, anchor: Description | None
) -> list[int]:
    subjects = _matches(objects, subject)
    if relation is None or anchor is None:
        return subjects
    found: set[int] = set()
    for anchor_index in _matches(objects, anchor):
        found.update(_related(objects, subjects, anchor_index, relation))
    return sorted(found)


def _matches(objects: Sequence[SceneObject], description: Description) -> list[int]:
    found = [
        i
        for i, obj in enumerate(objects)
        if obj.category == description.category
        and (description.colour is None or obj.colour == description.colour)
        and (description.size is None or obj.size == description.size)
    ]
    location = description.location
    if location is None or not found:
        return found
    if location in SUPERLATIVES:
        key = _SUPERLATIVE_KEYS[location]
        best = min(key(objects[i]) for i in found)
        return [i for i in found if key(objects[i]) <= best + _SUPERLATIVE_MARGIN]
    return [i for i in found if _in_region(objects[i], location, strict=False)]


_SUPERLATIVE_KEYS: dict[str, Callable[[SceneObject], float]] = {
    "leftmost": lambda obj: obj.center[0],
    "rightmost": lambda obj: -obj.center[0],
    "topmost": lambda obj: obj.center[1],
    "bottommost": lambda obj: -obj.center[1],
}


def _in_region(obj: SceneObject, region: str, *, strict: bool) -> bool:
    cx, cy = obj.center
    if region == "center":
        half = _CENTER_STRICT if strict else _CENTER_POSSIBLE
        return abs(cx - 0.5) < half and abs(cy - 0.5) < half
    limit = _REGION_STRICT if strict else _REGION_POSSIBLE
    sides = {"left": cx < limit, "right": cx > 1 - limit, "top": cy < limit, "bottom": cy > 1 - limit}
    return all(sides[side] for side in region.split())


def _gap(a: SceneObject, b: SceneObject) -> float:
    """Euclidean distance between two boxes, in fractions of the image side (0 if they touch)."""
    ax0, ay0, ax1, ay1 = a.box
    bx0, by0, bx1, by1 = b.box
    dx = max(0, bx0 - ax1, ax0 - bx1)
    dy = max(0, by0 - ay1, ay0 - by1)
    return math.hypot(dx, dy) / a.image_size


def _related(
    objects: Sequence[SceneObject], candidates: Sequence[int], anchor: int, relation: str
) -> list[int]:
    """The candidates (other than the anchor) that could be read as ``relation`` the anchor."""
    others = [i for i in candidates if i != anchor]
    ref = objects[anchor]
    if relation == "next_to":
        gaps = {i: _gap(objects[i], ref) for i in others}
        if not gaps:
            return []
        limit = max(_NEAR_POSSIBLE, _NEAR_RATIO * min(gaps.values()) + _NEAR_SLACK)
        return [i for i in others if gaps[i] <= limit]
    # Any overhang past the anchor's edge on that side makes a reading possible; an object
    # directly above the anchor is not "left of" it even if its centre is a pixel further left.
    ax0, ay0, ax1, ay1 = ref.box
    if relation == "left_of":
        return [i for i in others if objects[i].box[0] < ax0]
    if relation == "right_of":
        return [i for i in others if objects[i].box[2] > ax1]
    if relation == "above":
        return [i for i in others if objects[i].box[1] < ay0]
    return [i for i in others if objects[i].box[3] > ay1]


def _clearly_related(target: SceneObject, anchor: SceneObject, relation: str) -> bool:
    """Whether the generator may say ``target relation anchor``: boxes apart, roughly aligned."""
    tx0, ty0, tx1, ty1 = target.box
    ax0, ay0, ax1, ay1 = anchor.box
    (tx, ty), (ax, ay) = target.center, anchor.center
    if relation == "left_of":
        return tx1 <= ax0 and abs(ty - ay) <= _ALIGNMENT
    if relation == "right_of":
        return tx0 >= ax1 and abs(ty - ay) <= _ALIGNMENT
    if relation == "above":
        return ty1 <= ay0 and abs(tx - ax) <= _ALIGNMENT
    if relation == "below":
        return ty0 >= ay1 and abs(tx - ax) <= _ALIGNMENT
    return _gap(target, anchor) <= _NEAR_STRICT


# --------------------------------------------------------------------------------------------------
# Finding the simplest unambiguous expression of a type
# --------------------------------------------------------------------------------------------------


def _plain_levels(obj: SceneObject) -> list[list[Description]]:
    """Location-free descriptions of ``obj``, grouped by how many attributes they use."""
    cat, colour, size = obj.category, obj.colour, obj.size
    return [
        [Description(cat)],
        [Description(cat, colour=colour), Description(cat, size=size)],
        [Description(cat, colour=colour, size=size)],
    ]


def _attribute_options(objects: Sequence[SceneObject], target: int) -> list[Description]:
    """All unambiguous attribute descriptions of the target with the fewest attributes."""
    obj = objects[target]
    cat, colour, size = obj.category, obj.colour, obj.size
    regions = [region for region in REGIONS if _in_region(obj, region, strict=True)]
    levels: list[list[Description]] = [[], [], []]
    for base in (Description(cat), Description(cat, colour=colour), Description(cat, size=size)):
        level = base.num_attributes
        if level:
            levels[level - 1].append(base)
        # A superlative reads naturally only among several objects that fit the rest of the phrase.
        superlatives = SUPERLATIVES if len(_matches(objects, base)) >= 2 else ()
        for location in (*regions, *superlatives):
            levels[level].append(Description(cat, base.colour, base.size, location))
    full = Description(cat, colour, size)
    levels[1].append(full)
    if len(_matches(objects, full)) >= 2:
        levels[2].extend(Description(cat, colour, size, location) for location in (*regions, *SUPERLATIVES))
    else:
        levels[2].extend(Description(cat, colour, size, region) for region in regions)
    for level in levels:
        unique = [d for d in level if _matches(objects, d) == [target]]
        if unique:
            return unique
    return []


def _relation_options(
    objects: Sequence[SceneObject], target: int
) -> list[tuple[Description, str, Description]]:
    """All unambiguous ``(subject, relation, anchor)`` triples with the fewest attributes in total.

    Subjects that alone already single out the target are only used when no other option exists
    (a target alone in its category), so that the relation is normally needed to resolve the subject.
    """
    obj = objects[target]
    anchors: list[tuple[int, int, list[Description], list[str]]] = []
    for index, other in enumerate(objects):
        relations = [r for r in RELATIONS if index != target and _clearly_related(obj, other, r)]
        if not relations:
            continue
        for level, descriptions in enumerate(_plain_levels(other)):
            unique = [d for d in descriptions if _matches(objects, d) == [index]]
            if unique:
                anchors.append((level, index, unique, relations))
                break
    subjects = [[(d, _matches(objects, d)) for d in level] for level in _plain_levels(obj)]
    for min_candidates in (2, 1):
        for total in range(5):
            found = []
            for subject_level, level_subjects in enumerate(subjects):
                for anchor_level, anchor, descriptions, relations in anchors:
                    if subject_level + anchor_level != total:
                        continue
                    for subject, candidates in level_subjects:
                        if len(candidates) < min_candidates:
                            continue
                        for relation in relations:
                            if _related(objects, candidates, anchor, relation) == [target]:
                                found.extend((subject, relation, d) for d in descriptions)
            if found:
                return found
    return []


# --------------------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------------------

_NOUNS = {
    "building": ("building",),
    "car": ("car", "vehicle"),
    "storage tank": ("storage tank", "tank"),
    "ship": ("ship", "boat"),
    "tree": ("tree",),
    "tennis court": ("tennis court", "court"),
    "swimming pool": ("swimming pool", "pool"),
    "plane": ("plane", "airplane"),
}
_SIZE_WORDS = {"small": ("small",), "large": ("large", "big")}
_PLAIN = ("the {np}", "{np}")
_SIDE_PREPOSITION = {"left": "on the", "right": "on the", "top": "at the", "bottom": "at the"}
_LOCATION_TEMPLATES: dict[str, tuple[str, ...]] = {
    **{
        side: (f"the {{np}} {prep} {side}", f"{{np}} {prep} {side}", f"the {side} {{np}}")
        for side, prep in _SIDE_PREPOSITION.items()
    },
    **{
        corner: (f"the {{np}} at the {corner}", f"{{np}} in the {corner} corner", f"the {corner} {{np}}")
        for corner in ("top left", "top right", "bottom left", "bottom right")
    },
    "center": ("the {np} in the center", "{np} in the middle", "the {np} in the middle"),
    "leftmost": ("the leftmost {np}", "the {np} furthest left"),
    "rightmost": ("the rightmost {np}", "the {np} furthest right"),
    "topmost": ("the topmost {np}", "the {np} closest to the top"),
    "bottommost": ("the bottommost {np}", "the {np} closest to the bottom"),
}
_RELATION_WORDS = {
    "left_of": ("left of", "to the left of"),
    "right_of": ("right of", "to the right of"),
    "above": ("above",),
    "below": ("below",),
    "next_to": ("next to", "near", "beside"),
}


def _pick(options: Sequence[Any], rng: np.random.Generator | None) -> Any:
    """A random option, or the first (canonical) one without an rng."""
    return options[0] if rng is None else options[_randint(rng, len(options))]


def _noun_phrase(description: Description, rng: np.random.Generator | None) -> str:
    words = []
    if description.size is not None:
        words.append(_pick(_SIZE_WORDS[description.size], rng))
    if description.colour is not None:
        words.append(description.colour)
    words.append(_pick(_NOUNS[description.category], rng))
    return " ".join(words)


def _description_text(description: Description, rng: np.random.Generator | None) -> str:
    templates = _PLAIN if description.location is None else _LOCATION_TEMPLATES[description.location]
    return _pick(templates, rng).format(np=_noun_phrase(description, rng))


def _expression_text(
    subject: Description, relation: str | None, anchor: Description | None, rng: np.random.Generator | None
) -> str:
    text = _description_text(subject, rng)
    if relation is None or anchor is None:
        return text
    return f"{text} {_pick(_RELATION_WORDS[relation], rng)} the {_noun_phrase(anchor, rng)}"


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
        count = self.min_objects + _randint(rng, self.max_objects - self.min_objects + 1)
        category = CATEGORIES[_randint(rng, len(CATEGORIES))]
        same = 1
        if distractor:
            same = 3 if count >= 3 and rng.random() < _SECOND_DISTRACTOR_RATE else 2
        others = [c for c in CATEGORIES if c != category]
        categories = [category] * same + [others[_randint(rng, len(others))] for _ in range(count - same)]
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


def _randint(rng: np.random.Generator, n: int) -> int:
    """Uniform integer in [0, n); a fraction of the cost of ``rng.integers`` on scalars."""
    return int(rng.random() * n)


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
            if _matches(objects, subject) != [target]:
                continue
        elif kind == "attribute":
            options = _attribute_options(objects, target)
            if not options:
                continue
            # Choose the kind of attribute first so that the many location words do not crowd out colour/size.
            facet = _pick(sorted({_facet(d) for d in options}), rng)
            subject = _pick([d for d in options if _facet(d) == facet], rng)
        else:
            triples = _relation_options(objects, target)
            if not triples:
                continue
            relation = _pick(sorted({r for _, r, _ in triples}), rng)
            subject, _, anchor = _pick([t for t in triples if t[1] == relation], rng)
        if _referents(objects, subject, relation, anchor) != [target]:
            raise RuntimeError(f"internal error: ambiguous {kind} expression was about to be emitted")
        text = _expression_text(subject, relation, anchor, rng)
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
            relations_needed += len(_matches(sample.objects, sample.expression.subject)) >= 2
            relations_irreplaceable += not _attribute_options(sample.objects, sample.target)
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
            ``original_size``: ``(H, W)``.

        Raises:
            IndexError: If ``index`` is outside ``[0, length)``.
        """
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} is out of range for a dataset of length {self.length}")
        sample = self.generator.sample(self.split, index)
        image = torch.from_numpy(sample.image).permute(2, 0, 1).float().div_(255.0)
        mask = torch.from_numpy(sample.mask).unsqueeze(0).float()
        return {
            "image": image,
            "mask": mask,
            "sentence": sample.sentence,
            "sample_id": sample.sample_id,
            "expression_type": sample.expression_type,
            "category": sample.category,
            "original_size": tuple(sample.mask.shape),
        }


def export_unified_jsonl(
    generator: SyntheticSceneGenerator, *, split_sizes: Mapping[str, int], out_dir: Path
) -> dict[str, Path]:
    """Write samples as the unified JSONL + PNG layout (see DATA.md).

    Writes ``out_dir/images/<sample_id>.png`` and ``out_dir/<split>.jsonl``, one object per line
    with ``split, image_id, sent, file_name`` (relative to ``images/``), ``segmentation`` (one COCO
    RLE with str counts), ``category_name, expression_type`` and ``bbox`` ``[x1, y1, x2, y2]`` of the
    mask (``x2``/``y2`` exclusive). Every file is written atomically.

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
                "image_id": sample.sample_id,
                "sent": sample.sentence,
                "file_name": file_name,
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
