"""model_input.py: a slide's pixels as the model sees them; one luminance channel for any stain."""

import numpy as np
import pytest

from sebre_ij.infer import read_tile
from sebre_ij.model import ModelCard
from sebre_ij.model_input import CEILING, InputMap, image_input, input_map
from sebre_ij.synth import synth_section
from sebre_ij.tiles import Tile


def section():
    """A synthetic DAB section on glass: (3, H, W) in [0, 1] and its section labels."""
    image, labels = synth_section((160, 200), np.random.default_rng(0))
    return image.astype(np.float32) / 255, (labels > 0).astype(np.uint16)


def test_channels_mode_leaves_pixels_as_they_are():
    image, sections = section()
    view = input_map("channels", image, sections)
    assert view.apply(image) is image
    np.testing.assert_allclose(view.fill, np.median(image[:, sections == 0], axis=1), rtol=1e-6)


def test_luminance_puts_glass_at_one_and_the_darkest_tissue_at_zero():
    image, sections = section()
    out = input_map("luminance", image, sections).apply(image)
    assert out.shape == (1, *image.shape[1:]) and out.dtype == np.float32
    assert np.median(out[0][sections == 0]) == pytest.approx(1.0, abs=1e-6)
    assert np.percentile(out[0][sections > 0], 1) == pytest.approx(0.0, abs=0.02)
    assert out.min() >= 0 and out.max() <= CEILING


def test_a_fluorescence_look_of_the_same_tissue_gives_the_same_input():
    """Grey, inverted, on a dark background and another exposure: the same numbers as the brightfield."""
    image, sections = section()
    fluorescence = (0.8 * (1.0 - image.mean(axis=0, keepdims=True)) + 0.05).astype(np.float32)
    bright = input_map("luminance", image, sections)
    dark = input_map("luminance", fluorescence, sections)
    assert dark.invert and not bright.invert
    np.testing.assert_allclose(dark.apply(fluorescence), bright.apply(image), atol=2e-3)
    np.testing.assert_allclose(image_input("luminance", fluorescence), image_input("luminance", image), atol=2e-3)


def test_a_dim_scan_gives_the_input_of_a_bright_one():
    """A 16-bit fluorescence scan whose signal fills a thousandth of the dtype's range (the CCFv3
    template's TIFFs) is stretched as the same picture at full range."""
    image, sections = section()
    fluorescence = (1.0 - image.mean(axis=0, keepdims=True)).astype(np.float32)
    dim = (fluorescence * 0.004).astype(np.float32)
    np.testing.assert_allclose(
        input_map("luminance", dim, sections).apply(dim),
        input_map("luminance", fluorescence, sections).apply(fluorescence),
        atol=2e-3,
    )


def test_the_card_says_how_a_model_sees_a_slide():
    names = ["background", "cortex"]
    plain = ModelCard("tiny_fpn", names, [(0, 0, 0)] * 2, 50.0, list("RGB"), [0.5] * 3, [0.2] * 3)
    assert '"input"' not in plain.to_json()  # as channel-mode cards were written before the field existed
    grey = ModelCard("tiny_fpn", names, [(0, 0, 0)] * 2, 50.0, ["luminance"], [0.5], [0.2], input="luminance")
    assert ModelCard.from_json(grey.to_json()).input == "luminance"
    with pytest.raises(ValueError, match="luminance model's channels"):
        ModelCard(
            "tiny_fpn", names, [(0, 0, 0)] * 2, 50.0, list("RGB"), [0.5] * 3, [0.2] * 3, input="luminance"
        ).check()
    assert InputMap("channels", (1.0,)).fill.dtype == np.float32


def test_a_section_filling_most_of_its_picture_puts_its_glass_at_one_in_either_look():
    """A single section exported with a narrow margin, its stain dark as DAB: tissue is most of the
    picture and below the middle of its range, yet glass is still found and set to 1, and the
    fluorescence look gives the same input."""
    image, sections = section()
    ys, xs = np.nonzero(sections)
    crop = image[:, ys.min() - 3 : ys.max() + 4, xs.min() - 3 : xs.max() + 4] ** 2
    tissue = sections[ys.min() - 3 : ys.max() + 4, xs.min() - 3 : xs.max() + 4] > 0
    assert tissue.mean() > 0.55 and np.median(crop.mean(axis=0)) < 0.5 * (crop.min() + crop.max())
    fluorescence = (1.0 - crop.mean(axis=0, keepdims=True)).astype(np.float32)
    bright, dark = image_input("luminance", crop), image_input("luminance", fluorescence)
    assert np.median(bright[0][~tissue]) == pytest.approx(1.0, abs=0.02)
    np.testing.assert_allclose(dark, bright, atol=2e-3)


def test_scanner_black_beside_the_glass_is_read_as_glass():
    """Black where a scanner scanned nothing (every channel 0) leaves the map as on plain glass, and
    tiles read it in the glass's colour, resampled or not."""
    image, sections = section()
    assert not sections[-30:].any()
    black = image.copy()
    black[:, -30:] = 0
    plain, seen = input_map("luminance", image, sections), input_map("luminance", black, sections)
    assert seen.black_is_glass and not plain.black_is_glass and not seen.invert and not plain.invert
    assert seen.glass == pytest.approx(plain.glass, abs=0.01) and seen.low == pytest.approx(plain.low, abs=0.01)
    h, w = image.shape[1:]
    for factor in (1.0, 2.0):
        tile = Tile(0, 0, 64, (slice(0, 64), slice(0, 64)))
        size = int(64 * factor)
        window = black[:, h - size :, w - size :]
        read = read_tile(window, "cyx", tile, 0, seen.fill, factor, seen.black_is_glass)
        bottom = read[:, -int(30 / factor) + 1 :]
        np.testing.assert_allclose(bottom, np.broadcast_to(seen.fill[:, None, None], bottom.shape), atol=1e-5)
