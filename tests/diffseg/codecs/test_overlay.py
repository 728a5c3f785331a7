"""diffseg.codecs.overlay: palette, blending and the legend a user reads."""

from __future__ import annotations

import numpy as np
import pytest

from diffseg.codecs.overlay import blend_labels, palette, render_overlay

NAMES = ["cat", "dog", "sky", "tree"]


def photo(height: int, width: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(60, 200, (height, width, 3), dtype=np.uint8)


def labels_for(height: int, width: int) -> np.ndarray:
    labels = np.zeros((height, width), dtype=np.uint8)
    labels[: height // 2, : width // 2] = 1
    labels[height // 2 :, width // 2 :] = 3
    return labels


def has_colour(canvas: np.ndarray, colour, region=(slice(None), slice(None))) -> bool:
    return bool(np.all(canvas[region] == np.asarray(colour, dtype=np.uint8), axis=-1).any())


def test_palette_is_deterministic_distinct_with_black_background():
    colours = palette(256)
    assert colours.shape == (256, 3) and colours.dtype == np.uint8
    assert colours[0].tolist() == [0, 0, 0]
    assert len({tuple(c) for c in colours.tolist()}) == 256
    np.testing.assert_array_equal(palette(256), colours)
    np.testing.assert_array_equal(palette(10), colours[:10])
    assert len({tuple(c) for c in palette(5000).tolist()}) == 5000
    assert palette(0).shape == (0, 3)


def test_overlay_keeps_background_and_moves_class_pixels_towards_their_colour():
    image, labels = photo(64, 48), labels_for(64, 48)
    canvas = np.asarray(render_overlay(image, labels, NAMES, alpha=0.5))
    assert canvas.shape[0] >= 64 and canvas.shape[1] >= 48
    shown = canvas[:64, :48]
    background = labels == 0
    np.testing.assert_array_equal(shown[background], image[background])
    colours = palette(5).astype(int)
    for k in (1, 3):
        pixels = labels == k
        before = np.abs(image[pixels].astype(int) - colours[k]).sum(axis=1)
        after = np.abs(shown[pixels].astype(int) - colours[k]).sum(axis=1)
        assert np.all(after < before)
        expected = np.rint(0.5 * image[pixels] + 0.5 * colours[k])
        assert np.abs(shown[pixels] - expected).max() <= 1


def test_alpha_one_paints_the_class_colour_and_zero_keeps_the_image():
    image, labels = photo(8, 8), labels_for(8, 8)
    full = blend_labels(image, labels, alpha=1.0)
    assert full[0, 0].tolist() == palette(2)[1].tolist()
    np.testing.assert_array_equal(blend_labels(image, labels, alpha=0.0), image)


def test_legend_lists_present_classes_only():
    image, labels = photo(64, 48), labels_for(64, 48)  # classes 1 and 3 present; 2 and 4 absent
    canvas = np.asarray(render_overlay(image, labels, NAMES))
    assert canvas.shape[1] > 48  # tall image: legend on the right
    legend = (slice(None), slice(48, None))
    colours = palette(5)
    assert has_colour(canvas, colours[1], legend) and has_colour(canvas, colours[3], legend)
    assert not has_colour(canvas, colours[2], legend) and not has_colour(canvas, colours[4], legend)


def test_more_classes_make_a_bigger_legend():
    image = photo(64, 48)
    one = np.zeros((64, 48), np.uint8)
    one[:10] = 1
    four = one.copy()
    four[20:30], four[30:40], four[40:50] = 2, 3, 4
    small = render_overlay(image, one, NAMES)
    large = render_overlay(image, four, NAMES)
    assert large.size[0] * large.size[1] > small.size[0] * small.size[1]


def test_wide_image_gets_legend_below():
    image, labels = photo(20, 900), labels_for(20, 900)
    canvas = np.asarray(render_overlay(image, labels, NAMES))
    assert canvas.shape[1] == 900 and canvas.shape[0] > 20
    below = (slice(20, None), slice(None))
    assert has_colour(canvas, palette(2)[1], below)


def test_very_tall_image_and_many_classes_wrap_into_columns():
    names = [f"class number {k}" for k in range(1, 201)]
    labels = (np.arange(2000 * 10) // 100 % 200 + 1).reshape(2000, 10).astype(np.uint8)
    canvas = render_overlay(photo(2000, 10), labels, names)
    assert canvas.size[1] == 2000 and canvas.size[0] > 10  # the legend did not stretch the height
    assert has_colour(np.asarray(canvas), palette(201)[200])


def test_one_by_one_image_works_and_title_is_drawn():
    image = np.full((1, 1, 3), 90, np.uint8)
    canvas = render_overlay(
        image, np.ones((1, 1), np.uint8), NAMES, title="tiny random model: masks are meaningless"
    )
    array = np.asarray(canvas)
    assert canvas.mode == "RGB" and array.shape[0] > 1 and array.shape[1] > 100  # room for the title
    assert has_colour(array, palette(2)[1])
    untitled = render_overlay(image, np.ones((1, 1), np.uint8), NAMES)
    assert untitled.size[1] < canvas.size[1]


def test_no_class_present_keeps_every_pixel_and_the_legend_says_so_in_text_only():
    image = photo(40, 40)
    canvas = np.asarray(render_overlay(image, np.zeros((40, 40), np.uint8), NAMES))
    np.testing.assert_array_equal(canvas[:40, :40], image)  # nothing is painted over the image
    assert canvas.shape[0] == 40 and canvas.shape[1] > 40  # square image: the legend on the right
    legend = canvas[:, 40:].astype(int)
    assert np.all(legend.max(-1) == legend.min(-1))  # only white and grey text: no class swatch
    assert (legend[..., 0] < 128).sum() > 20  # but it has text ("no class present")
    one_class = np.asarray(render_overlay(image, np.ones((40, 40), np.uint8), NAMES))
    assert has_colour(one_class, palette(2)[1], (slice(None), slice(40, None)))  # a swatch when present


def test_bad_inputs_are_named():
    image = photo(4, 4)
    with pytest.raises(ValueError, match=r"\(4, 4\)"):
        render_overlay(image, np.zeros((3, 4), np.uint8), NAMES)
    with pytest.raises(ValueError, match="class id 9"):
        render_overlay(image, np.full((4, 4), 9, np.uint8), NAMES)
    with pytest.raises(ValueError, match="alpha"):
        render_overlay(image, np.zeros((4, 4), np.uint8), NAMES, alpha=1.5)
