"""The language of the synthetic scenes: structured referring expressions, their meaning and their words.

An `Expression` names a subject `Description` (category plus optional colour, size, region or
superlative) and optionally a relation to an anchor description. `referents` evaluates it against a
scene. Judging positions uses two thresholds: a strict one for what the generator is willing to
say about the target and a loose one for which objects a reader could possibly take the words to
mean; the generator only emits an expression when no other object is even possibly meant. Image
coordinates: x to the right, y downward ("above" = smaller y).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rsrefseg.data.synthetic_render import CATEGORIES, COLOUR_RGB, SIZE_CLASSES, SceneObject

EXPRESSION_TYPES = ("category", "attribute", "relation")
REGIONS = ("left", "right", "top", "bottom", "top left", "top right", "bottom left", "bottom right", "center")
SUPERLATIVES = ("leftmost", "rightmost", "topmost", "bottommost")
LOCATIONS = REGIONS + SUPERLATIVES
RELATIONS = ("left_of", "right_of", "above", "below", "next_to")

# Position thresholds, in fractions of the image side (object centres unless stated otherwise).
_REGION_STRICT, _REGION_POSSIBLE = 0.40, 0.55  # "left": target centre x < 0.40; others must be >= 0.55
_CENTER_STRICT, _CENTER_POSSIBLE = 0.15, 0.30  # half-width of the central box
_SUPERLATIVE_MARGIN = 0.10  # the runner-up must be this much less extreme
_ALIGNMENT = 0.35  # "left of" also needs the two roughly side by side
_NEAR_STRICT = 0.15  # box-to-box gap the target may have to its "next to" anchor
_NEAR_POSSIBLE, _NEAR_RATIO, _NEAR_SLACK = 0.12, 1.6, 0.03  # who else could be "next to" it


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
            object.__setattr__(self, "text", expression_text(self.subject, self.relation, self.anchor, None))

    @property
    def category(self) -> str:
        """The referent's category."""
        return self.subject.category


def randint(rng: np.random.Generator, n: int) -> int:
    """Uniform integer in [0, n); a fraction of the cost of ``rng.integers`` on scalars."""
    return int(rng.random() * n)


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
    return evaluate_description(objects, expression.subject, expression.relation, expression.anchor)


def evaluate_description(
    objects: Sequence[SceneObject], subject: Description, relation: str | None, anchor: Description | None
) -> list[int]:
    subjects = matching(objects, subject)
    if relation is None or anchor is None:
        return subjects
    found: set[int] = set()
    for anchor_index in matching(objects, anchor):
        found.update(_related(objects, subjects, anchor_index, relation))
    return sorted(found)


def matching(objects: Sequence[SceneObject], description: Description) -> list[int]:
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


def box_gap(a: SceneObject, b: SceneObject) -> float:
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
        gaps = {i: box_gap(objects[i], ref) for i in others}
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
    return box_gap(target, anchor) <= _NEAR_STRICT


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


def attribute_options(objects: Sequence[SceneObject], target: int) -> list[Description]:
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
        superlatives = SUPERLATIVES if len(matching(objects, base)) >= 2 else ()
        for location in (*regions, *superlatives):
            levels[level].append(Description(cat, base.colour, base.size, location))
    full = Description(cat, colour, size)
    levels[1].append(full)
    if len(matching(objects, full)) >= 2:
        levels[2].extend(Description(cat, colour, size, location) for location in (*regions, *SUPERLATIVES))
    else:
        levels[2].extend(Description(cat, colour, size, region) for region in regions)
    for level in levels:
        unique = [d for d in level if matching(objects, d) == [target]]
        if unique:
            return unique
    return []


def relation_options(
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
            unique = [d for d in descriptions if matching(objects, d) == [index]]
            if unique:
                anchors.append((level, index, unique, relations))
                break
    subjects = [[(d, matching(objects, d)) for d in level] for level in _plain_levels(obj)]
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


def pick(options: Sequence[Any], rng: np.random.Generator | None) -> Any:
    """A random option, or the first (canonical) one without an rng."""
    return options[0] if rng is None else options[randint(rng, len(options))]


def _noun_phrase(description: Description, rng: np.random.Generator | None) -> str:
    words = []
    if description.size is not None:
        words.append(pick(_SIZE_WORDS[description.size], rng))
    if description.colour is not None:
        words.append(description.colour)
    words.append(pick(_NOUNS[description.category], rng))
    return " ".join(words)


def _description_text(description: Description, rng: np.random.Generator | None) -> str:
    templates = _PLAIN if description.location is None else _LOCATION_TEMPLATES[description.location]
    return pick(templates, rng).format(np=_noun_phrase(description, rng))


def expression_text(
    subject: Description, relation: str | None, anchor: Description | None, rng: np.random.Generator | None
) -> str:
    text = _description_text(subject, rng)
    if relation is None or anchor is None:
        return text
    return f"{text} {pick(_RELATION_WORDS[relation], rng)} the {_noun_phrase(anchor, rng)}"
