"""The look of the synthetic scenes: categories, named colours, sizes, object shapes and rendering.

Everything here is cheap numpy on small arrays so that a 64×64 scene renders in well under a
millisecond. Sizes are given for a 64-pixel reference image and scaled with the image size, so a
scene's layout statistics do not depend on the resolution.

The scene generator (`rsrefseg.data.synthetic`) samples `SceneObject`s; `object_mask` and
`SceneRenderer.render` turn them into pixels. A mask is a pure function of the object, so the
referent mask of a sample can always be recomputed from its objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np

REFERENCE_SIZE = 64
"""Image side, in pixels, for which the sizes in `CATEGORY_STYLES` are given."""

SIZE_CLASSES = ("small", "large")
ORIENTATIONS = ("horizontal", "vertical")

COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (190, 45, 40),
    "white": (228, 228, 224),
    "gray": (135, 135, 140),
    "black": (28, 28, 32),
    "blue": (45, 85, 185),
    "light blue": (115, 200, 232),
    "yellow": (228, 198, 40),
    "brown": (122, 82, 50),
    "green": (55, 140, 75),
    "light green": (105, 175, 65),
    "dark green": (30, 88, 38),
}
"""Reference RGB of every colour name; each object jitters its colour slightly around it."""

_SHADES: dict[tuple[str, str], tuple[int, int, int]] = {
    # A colour word covers a range of hues; these keep look-alike categories apart (a blue pool is
    # azure, a blue car navy) so that the category stays visible, not only the size.
    ("swimming pool", "blue"): (30, 135, 215),
    ("building", "blue"): (75, 105, 150),
    ("tennis court", "red"): (175, 88, 62),
}


def colour_rgb(category: str, colour: str) -> tuple[int, int, int]:
    """Reference RGB of a colour name on an object of ``category``."""
    return _SHADES.get((category, colour), COLOUR_RGB[colour])


@dataclass(frozen=True)
class CategoryStyle:
    """How one category looks.

    Attributes:
        colours: Colour names (keys of `COLOUR_RGB`) an object of this category may have.
        small: ``((long_min, long_max), (short_min, short_max))`` side lengths, in pixels of a
            64-pixel image, of a 'small' object (both ends inclusive).
        large: The same for a 'large' object.
        square: Whether the footprint is square (disks, crosses); then only the long range is used.
        context_margin: Pixels (at 64 px) of context drawn around the object and kept free of other
            objects, e.g. the water under a ship.
    """

    colours: tuple[str, ...]
    small: tuple[tuple[int, int], tuple[int, int]]
    large: tuple[tuple[int, int], tuple[int, int]]
    square: bool = False
    context_margin: int = 0


CATEGORY_STYLES: dict[str, CategoryStyle] = {
    "building": CategoryStyle(
        ("red", "gray", "white", "brown", "blue"), ((8, 10), (6, 8)), ((13, 16), (10, 13))
    ),
    "car": CategoryStyle(
        ("red", "white", "black", "blue", "yellow", "gray"), ((5, 5), (3, 3)), ((7, 8), (4, 4))
    ),
    "storage tank": CategoryStyle(("white", "gray"), ((5, 6), (5, 6)), ((9, 11), (9, 11)), square=True),
    "ship": CategoryStyle(("white", "gray", "red"), ((8, 10), (3, 3)), ((13, 16), (4, 5)), context_margin=3),
    "tree": CategoryStyle(("light green", "dark green"), ((5, 6), (5, 6)), ((8, 10), (8, 10)), square=True),
    "tennis court": CategoryStyle(("green", "blue", "red"), ((10, 11), (6, 7)), ((14, 16), (9, 10))),
    "swimming pool": CategoryStyle(("blue", "light blue"), ((6, 7), (4, 5)), ((10, 12), (6, 7))),
    "plane": CategoryStyle(("white", "gray"), ((9, 10), (9, 10)), ((13, 15), (13, 15)), square=True),
}

CATEGORIES: tuple[str, ...] = tuple(CATEGORY_STYLES)

_GROUND_TONES = np.array(
    [(150, 140, 115), (112, 124, 84), (168, 162, 146), (132, 112, 88), (140, 136, 122)], dtype=np.float32
)
_WATER_RGB = np.array((38, 72, 112), dtype=np.float32)
_ROAD_RGB = np.array((98, 98, 100), dtype=np.float32)
_LINE_RGB = np.array((236, 236, 232), dtype=np.float32)
_SHADOW = np.float32(0.62)
_LOW_FREQ_TILE = 5  # the ground's slow variation is a 5×5 random tile, bilinearly upsampled


@dataclass(frozen=True)
class SceneObject:
    """One object of a synthetic scene.

    Attributes:
        category: One of `CATEGORIES`.
        colour: A colour name allowed for the category (see `CATEGORY_STYLES`).
        size: 'small' or 'large'; the pixel size this means depends on the category.
        box: ``(x0, y0, x1, y1)`` pixel footprint of the object, x to the right and y downward,
            ``x1``/``y1`` exclusive. The object's mask lies inside it.
        image_size: Side, in pixels, of the square image the object lives in.
        orientation: Direction of the long axis, 'horizontal' or 'vertical'.
        shape_seed: Small integer that fixes the outline details (tree outline, ship bow side,
            plane heading), so that the mask is a pure function of the object.
    """

    category: str
    colour: str
    size: str
    box: tuple[int, int, int, int]
    image_size: int
    orientation: str = "horizontal"
    shape_seed: int = 0

    def __post_init__(self) -> None:
        if self.category not in CATEGORY_STYLES:
            raise ValueError(f"category={self.category!r} is unknown; expected one of {CATEGORIES}")
        allowed = CATEGORY_STYLES[self.category].colours
        if self.colour not in allowed:
            raise ValueError(
                f"colour={self.colour!r} is not used for {self.category!r}; expected one of {allowed}"
            )
        if self.size not in SIZE_CLASSES:
            raise ValueError(f"size={self.size!r}; expected one of {SIZE_CLASSES}")
        if self.orientation not in ORIENTATIONS:
            raise ValueError(f"orientation={self.orientation!r}; expected one of {ORIENTATIONS}")
        x0, y0, x1, y1 = self.box
        if not (0 <= x0 < x1 <= self.image_size and 0 <= y0 < y1 <= self.image_size):
            raise ValueError(f"box={self.box} must satisfy 0 <= x0 < x1 <= {self.image_size} (same for y)")

    @cached_property
    def center(self) -> tuple[float, float]:
        """Centre ``(x, y)`` as fractions of the image side (0 = left/top edge, 1 = right/bottom)."""
        x0, y0, x1, y1 = self.box
        return (x0 + x1) / (2 * self.image_size), (y0 + y1) / (2 * self.image_size)


def scaled(value: float, image_size: int) -> int:
    """A length given at the 64-pixel reference, in pixels of an `image_size` image (at least 1)."""
    return max(1, round(value * image_size / REFERENCE_SIZE))


def local_mask(obj: SceneObject) -> np.ndarray:
    """The object's pixels inside its box.

    Returns:
        Read-only bool array of shape ``(y1 - y0)×(x1 - x0)`` (shared between equal shapes).
    """
    x0, y0, x1, y1 = obj.box
    return _shape_mask(obj.category, y1 - y0, x1 - x0, obj.orientation, obj.shape_seed % _SHAPE_VARIANTS)


_SHAPE_VARIANTS = 24  # outline variants per size: tree lobes/phase, ship bow side, plane heading
_RECTANGULAR = frozenset({"building", "car", "tennis court", "swimming pool"})


@lru_cache(maxsize=8192)
def _shape_mask(category: str, h: int, w: int, orientation: str, variant: int) -> np.ndarray:
    if category in ("storage tank", "tree"):
        dy, dx = _offsets(h, w)
        radius = min(h, w) / 2
        if category == "storage tank":
            mask = dx * dx + dy * dy <= radius * radius
        else:
            lobes, phase = 5 + variant % 3, (variant // 3) * (2 * np.pi / 8)
            limit = radius * (0.84 + 0.16 * np.cos(lobes * np.arctan2(dy, dx) + phase))
            mask = np.sqrt(dx * dx + dy * dy) <= np.maximum(limit, 0.75)
    elif category == "ship":
        mask = _ship_mask(h, w, vertical=orientation == "vertical", bow_first=variant % 2 == 1)
    elif category == "plane":
        mask = np.ascontiguousarray(np.rot90(_plane_mask(min(h, w)), k=variant % 4))
    else:
        mask = np.ones((h, w), dtype=bool)
    mask.setflags(write=False)
    return mask


def object_mask(obj: SceneObject) -> np.ndarray:
    """The object's pixels in the full image.

    Returns:
        Bool array of shape ``S×S`` with ``S = obj.image_size``.
    """
    full = np.zeros((obj.image_size, obj.image_size), dtype=bool)
    x0, y0, x1, y1 = obj.box
    full[y0:y1, x0:x1] = local_mask(obj)
    return full


def _offsets(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre offsets from the centre of an h×w box: shapes h×1 and 1×w (np.ogrid is slower)."""
    return np.arange(h)[:, None] + (0.5 - h / 2), np.arange(w)[None, :] + (0.5 - w / 2)


def _ship_mask(h: int, w: int, *, vertical: bool, bow_first: bool) -> np.ndarray:
    """A hull with a square stern and a tapering bow, long axis along x before any transpose."""
    length, beam = (h, w) if vertical else (w, h)
    bow = max(2, round(length * 0.3))
    yy, xx = np.arange(beam)[:, None], np.arange(length)[None, :]
    taper = np.clip((xx + 0.5 - (length - bow)) / bow, 0.0, 1.0)
    mask = np.abs(yy + 0.5 - beam / 2) <= (beam / 2) * (1.0 - taper) + 0.5
    if bow_first:
        mask = mask[:, ::-1]
    return np.ascontiguousarray(mask.T) if vertical else mask


def _plane_mask(side: int) -> np.ndarray:
    """A cross-shaped aircraft, nose up: fuselage, wings at 35 % of the length, small tail."""
    mask = np.zeros((side, side), dtype=bool)
    body = max(1, round(side * 0.2))
    c0 = (side - body) // 2
    mask[:, c0 : c0 + body] = True
    wing_top, wing = round(side * 0.3), max(1, round(side * 0.2))
    mask[wing_top : wing_top + wing, :] = True
    tail, inset = max(1, round(side * 0.12)), round(side * 0.25)
    mask[side - tail :, inset : side - inset] = True
    return mask


class SceneRenderer:
    """Draws `SceneObject`s on a textured ground.

    Noise tables are drawn once per generator seed; each scene takes random crops of them, which
    keeps the background cheap while never repeating exactly.

    Args:
        image_size: Side of the square images, in pixels.
        seed: Seed of the noise tables.
    """

    def __init__(self, *, image_size: int, seed: int) -> None:
        self.image_size = image_size
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5CE7E]))
        self._fine_noise = rng.standard_normal((2 * image_size, 2 * image_size)).astype(np.float32)
        self._pixel_noise = rng.standard_normal((2 * image_size, 2 * image_size)).astype(np.float32)
        # Bilinear upsampling of the low-frequency tile as one matrix product: S×T @ T×T @ T×S.
        pos = (np.arange(image_size) + 0.5) / image_size * (_LOW_FREQ_TILE - 1)
        lower = np.minimum(pos.astype(int), _LOW_FREQ_TILE - 2)
        frac = (pos - lower).astype(np.float32)
        upsample = np.zeros((image_size, _LOW_FREQ_TILE), dtype=np.float32)
        upsample[np.arange(image_size), lower] = 1 - frac
        upsample[np.arange(image_size), lower + 1] = frac
        self._upsample = upsample
        self._dashes = (np.arange(image_size) // scaled(3, image_size)) % 2 == 0  # road centre line

    def render(self, objects: tuple[SceneObject, ...], rng: np.random.Generator) -> np.ndarray:
        """Render a scene.

        Args:
            objects: Non-overlapping objects of this renderer's image size.
            rng: Source of the appearance randomness (ground, colour jitter, texture offsets).

        Returns:
            ``S×S×3`` uint8 RGB image.
        """
        # Drawing happens channel-first (3×S×S): broadcasting an RGB triple over a channel-last
        # array is several times slower in numpy, and this loop is the data pipeline's hot path.
        image = self._ground(rng)
        jitter = rng.uniform(-12, 12, (len(objects), 3)).astype(np.float32)
        for obj, colour_jitter in zip(objects, jitter, strict=True):
            colour = np.asarray(colour_rgb(obj.category, obj.colour), dtype=np.float32) + colour_jitter
            self._draw(image, obj, colour, rng)
        image += self._crop(self._pixel_noise, rng) * np.float32(2.5)
        np.clip(image, 0, 255, out=image)
        channels = image.astype(np.uint8)
        out = np.empty((self.image_size, self.image_size, 3), dtype=np.uint8)
        for c in range(3):
            out[..., c] = channels[c]
        return out

    def _crop(self, table: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        oy, ox = (rng.random(2) * self.image_size).astype(int).tolist()
        return table[oy : oy + self.image_size, ox : ox + self.image_size]

    def _ground(self, rng: np.random.Generator) -> np.ndarray:
        """Textured ground, optionally with parcels in other tones and a road: 3×S×S float32."""
        size = self.image_size
        # One batch of uniforms: rng.integers costs several microseconds per call.
        u = rng.random(16).tolist()
        tones = _GROUND_TONES[[int(v * len(_GROUND_TONES)) for v in u[:3]]]
        tones[0] += np.asarray(u[3:6], dtype=np.float32) * 20 - 10
        image = np.empty((3, size, size), dtype=np.float32)
        image[:] = tones[0][:, None, None]
        for k in range(int(u[6] * 3)):  # 0-2 fields / parcels in another ground tone
            uw, uh, ux, uy = u[7 + 4 * k : 11 + 4 * k]
            w, h = size // 4 + int(uw * (size // 4 + 1)), size // 4 + int(uh * (size // 4 + 1))
            x0, y0 = int(ux * (size - w + 1)), int(uy * (size - h + 1))
            image[:, y0 : y0 + h, x0 : x0 + w] = tones[1 + k][:, None, None]
        tile = rng.standard_normal((_LOW_FREQ_TILE, _LOW_FREQ_TILE)).astype(np.float32) * 9
        texture = self._upsample @ tile @ self._upsample.T + self._crop(self._fine_noise, rng) * np.float32(4)
        image += texture
        if u[15] < 0.5:
            self._road(image, rng)
        return image

    def _road(self, image: np.ndarray, rng: np.random.Generator) -> None:
        size = self.image_size
        width = scaled(5, size)
        u = rng.random(5).tolist()
        start = int(u[0] * (size - width + 1))
        road = (
            image[:, start : start + width]
            if u[1] < 0.5
            else image.transpose(0, 2, 1)[:, start : start + width]
        )
        road[:] = (_ROAD_RGB + np.asarray(u[2:], dtype=np.float32) * 16 - 8)[:, None, None]
        road[:, width // 2, self._dashes] = (_LINE_RGB * 0.85)[:, None]

    def _draw(
        self, image: np.ndarray, obj: SceneObject, colour: np.ndarray, rng: np.random.Generator
    ) -> None:
        """Draw one object into the 3×S×S image."""
        x0, y0, x1, y1 = obj.box
        mask = local_mask(obj)
        region = image[:, y0:y1, x0:x1]
        category = obj.category
        if category == "ship":
            margin = scaled(CATEGORY_STYLES["ship"].context_margin, obj.image_size)
            water = image[:, max(0, y0 - margin) : y1 + margin, max(0, x0 - margin) : x1 + margin]
            water[:] = (_WATER_RGB + rng.uniform(-8, 8, 3).astype(np.float32))[:, None, None]
        elif category in ("building", "tree", "plane", "storage tank"):
            self._shadow(image, obj, mask)
        if category in _RECTANGULAR:
            region[:] = colour[:, None, None]  # a slice is much cheaper than a boolean index
        else:
            region[:, mask] = colour[:, None]
        h, w = mask.shape
        long_axis_vertical = h > w
        if category == "building":  # roof ridge along the long axis
            if long_axis_vertical:
                region[:, :, w // 2] *= 0.82
            else:
                region[:, h // 2, :] *= 0.82
        elif category == "car" and max(h, w) >= 5:  # windscreen
            if long_axis_vertical:
                region[:, round(h * 0.3)] *= 0.45
            else:
                region[:, :, round(w * 0.3)] *= 0.45
        elif category == "storage tank" and min(h, w) >= 8:  # darker rim, where there is room for one
            dy, dx = _offsets(h, w)
            dist2 = dy * dy + dx * dx
            rim = mask & (dist2 >= (min(h, w) / 2 - 1) ** 2)
            region[:, rim] *= 0.7
        elif category == "tree":  # foliage texture
            texture = 1 + 0.12 * self._crop(self._fine_noise, rng)[:h, :w]
            region[:, mask] *= texture[mask]
        elif category == "tennis court":  # white side lines and net; the surface colour stays dominant
            line = _LINE_RGB[:, None, None]
            if long_axis_vertical:
                region[:, :, [0, -1]] = line
                region[:, h // 2 : h // 2 + 1] = line
            else:
                region[:, [0, -1], :] = line
                region[:, :, w // 2 : w // 2 + 1] = line
        elif category == "swimming pool" and min(h, w) >= 6:  # pale deck around the water
            deck = (_LINE_RGB * 0.92)[:, None, None]
            region[:, [0, -1], :] = deck
            region[:, :, [0, -1]] = deck

    @staticmethod
    def _shadow(image: np.ndarray, obj: SceneObject, mask: np.ndarray) -> None:
        """Darken the ground one pixel down-right of the object (never under the object itself)."""
        x0, y0, _, _ = obj.box
        h, w = mask.shape
        shadow = np.zeros((h + 1, w + 1), dtype=bool)
        shadow[1:, 1:] = mask
        shadow[:h, :w] &= ~mask
        hh, ww = min(h + 1, obj.image_size - y0), min(w + 1, obj.image_size - x0)
        image[:, y0 : y0 + hh, x0 : x0 + ww][:, shadow[:hh, :ww]] *= _SHADOW
