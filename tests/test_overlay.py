"""Overlays: the outline lies exactly on the mask boundary, the image is untouched elsewhere, text wraps."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFilter, ImageFont

from rsrefseg.predict import overlay
from rsrefseg.predict.overlay import mask_outline, render_overlay, save_png, wrap_text

COLOR = (255, 64, 0)


def scene(height: int = 48, width: int = 64) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    image[np.all(image == COLOR, axis=-1)] = 0  # no pixel may already be the outline colour
    mask = np.zeros((height, width), dtype=bool)
    mask[10:30, 20:45] = True
    mask[12:16, 30:34] = False  # a hole has a boundary too
    return image, mask


def boundary_by_min_filter(mask: np.ndarray) -> np.ndarray:
    """Independent reference: mask minus its 3×3 erosion (PIL's MinFilter), for a mask off the edges."""
    eroded = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).filter(ImageFilter.MinFilter(3))) > 0
    return mask & ~eroded


def test_outline_is_coloured_exactly_on_the_mask_boundary_and_nowhere_else():
    image, mask = scene()
    out = render_overlay(image, mask, "the red car", color=COLOR)
    picture = out[: image.shape[0]]
    outline = np.all(picture == COLOR, axis=-1)
    np.testing.assert_array_equal(outline, boundary_by_min_filter(mask))
    np.testing.assert_array_equal(picture[~outline], image[~outline])  # untouched elsewhere
    assert outline.sum() > 0 and outline[11, 31] and not outline[13, 31]  # the hole's edge is outlined


def test_a_mask_touching_the_image_edge_is_outlined_along_the_edge():
    mask = np.zeros((8, 8), dtype=bool)
    mask[:, :4] = True
    outline = mask_outline(mask)
    assert outline[:, 0].all() and outline[:, 3].all()
    assert not outline[1:-1, 1:3].any()


def test_thickness_widens_the_outline_inwards_only():
    _, mask = scene()
    thin, thick = mask_outline(mask, 1), mask_outline(mask, 3)
    assert (thick & ~mask).sum() == 0
    assert thin.sum() < thick.sum() and (thin & ~thick).sum() == 0


def test_empty_mask_leaves_the_image_as_it_was():
    image, _ = scene()
    out = render_overlay(image, np.zeros(image.shape[:2], dtype=bool), "the ship")
    np.testing.assert_array_equal(out[: image.shape[0]], image)


def test_banner_holds_the_sentence_below_the_image():
    image, mask = scene()
    out = render_overlay(image, mask, "the red car")
    assert out.dtype == np.uint8 and out.shape[1] == image.shape[1] and out.shape[0] > image.shape[0]
    banner = out[image.shape[0] :]
    assert (np.all(banner == overlay.BANNER_BACKGROUND, axis=-1)).mean() > 0.5
    assert (banner.max(axis=-1) > 200).any()  # white text was drawn


def test_long_sentence_is_wrapped_to_more_banner_lines():
    image, mask = scene(width=96)
    short = render_overlay(image, mask, "the ship")
    long = render_overlay(
        image, mask, "the small white storage tank right next to the large gray building " * 2
    )
    assert long.shape[0] > short.shape[0] and long.shape[1] == short.shape[1]


def test_wrap_text_keeps_lines_within_the_width_and_every_word():
    font = ImageFont.load_default(size=12)
    text = "the car left of the large building at the top right supercalifragilisticexpialidocious"
    lines = wrap_text(text, font, 60)
    assert len(lines) > 3
    assert all(font.getlength(line) <= 60 for line in lines)
    assert "".join(lines).replace(" ", "") == text.replace(" ", "")


def test_scale_magnifies_image_and_mask_together():
    image, mask = scene()
    out = render_overlay(image, mask, "the red car", scale=3)
    assert out.shape[1] == 3 * image.shape[1]
    picture = out[: 3 * image.shape[0]]
    outline = np.all(picture == COLOR, axis=-1)
    big = mask.repeat(3, 0).repeat(3, 1)
    assert (outline & ~big).sum() == 0 and outline.any()
    np.testing.assert_array_equal(picture[~big], image.repeat(3, 0).repeat(3, 1)[~big])


def test_non_latin_text_renders_with_the_freetype_and_the_bitmap_font(monkeypatch):
    image, mask = scene()
    sentence = "储罐 next to the café 🚗"
    assert render_overlay(image, mask, sentence).shape[1] == image.shape[1]
    # without FreeType Pillow falls back to a Latin-1 bitmap font, which raises UnicodeEncodeError
    monkeypatch.setattr(
        overlay.ImageFont, "load_default", lambda size=None: ImageFont.load_default_imagefont()
    )
    assert render_overlay(image, mask, sentence).shape[1] == image.shape[1]


@pytest.mark.parametrize(
    ("image", "mask", "match"),
    [
        (np.zeros((8, 8, 3), np.float32), np.zeros((8, 8), bool), "H×W×3 uint8"),
        (np.zeros((8, 8), np.uint8), np.zeros((8, 8), bool), "H×W×3 uint8"),
        (np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.float32), "H×W bool"),
        (np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9), bool), "same size"),
    ],
)
def test_bad_inputs_are_named(image, mask, match):
    with pytest.raises(ValueError, match=match):
        render_overlay(image, mask, "the ship")


def test_bad_colour_and_sentence_are_refused():
    image, mask = scene()
    with pytest.raises(ValueError, match="color"):
        render_overlay(image, mask, "x", color=(300, 0, 0))
    with pytest.raises(TypeError, match="sentence"):
        render_overlay(image, mask, None)  # type: ignore[arg-type]


def test_save_png_round_trips_and_refuses_to_overwrite(tmp_path):
    image, mask = scene()
    picture = render_overlay(image, mask, "the red car")
    path = save_png(tmp_path / "sub" / "overlay.png", picture)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), picture)
    with pytest.raises(FileExistsError, match="force"):
        save_png(path, np.zeros_like(picture))
    np.testing.assert_array_equal(np.asarray(Image.open(path)), picture)  # left as it was
    save_png(path, np.zeros_like(picture), force=True)
    assert not np.asarray(Image.open(path)).any()
    assert [p.name for p in path.parent.iterdir()] == ["overlay.png"]  # no temporary left behind


def test_save_png_writes_a_bool_mask_as_0_and_255(tmp_path):
    _, mask = scene()
    path = save_png(tmp_path / "mask.png", mask)
    written = np.asarray(Image.open(path))
    assert written.dtype == np.uint8 and set(np.unique(written)) == {0, 255}
    np.testing.assert_array_equal(written > 0, mask)


def test_save_png_refuses_other_names_and_arrays(tmp_path):
    with pytest.raises(ValueError, match=r"\.png"):
        save_png(tmp_path / "mask.jpg", np.zeros((4, 4), bool))
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(ValueError, match="folder"):
        save_png(tmp_path / "dir.png", np.zeros((4, 4), bool))
    with pytest.raises(ValueError, match="shape"):
        save_png(tmp_path / "x.png", np.zeros((4, 4, 3), np.float32))
    assert not (tmp_path / "x.png").exists()
