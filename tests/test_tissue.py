"""Tissue and sections on a coarse level: brightfield or fluorescence, reading order, dust."""

import numpy as np
import pytest
from conftest import shared_set
from scipy import ndimage
from skimage.segmentation import expand_labels

from sebre_ij.slide import open_slide
from sebre_ij.stores import write_slide, write_sparse_slide
from sebre_ij.synth import synth_slide
from sebre_ij.tiles import tile_grid
from sebre_ij.tissue import (
    _boxes_meet,
    bright_glass,
    fill_holes,
    find_sections,
    find_tissue,
    glass_colour,
    grow,
    scanner_black,
    tissue_mask,
    to_unit,
)


def dice(found: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks."""
    return 2 * (found & truth).sum() / (found.sum() + truth.sum())


def slide_with_blobs(fluorescence: bool, dtype=np.uint8) -> np.ndarray:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:300, :400]
    tissue = np.zeros((300, 400), bool)
    for cy, cx, r in [(80, 300, 50), (90, 90, 60), (220, 200, 55)]:  # top-right, top-left, bottom
        tissue |= (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
    tissue[280:283, 10:13] = True  # dust
    top = np.iinfo(dtype).max
    glass, stain = (0.05, 0.6) if fluorescence else (0.95, 0.45)
    grey = np.where(tissue, stain, glass) + rng.normal(0, 0.02, tissue.shape)
    return (np.clip(grey, 0, 1)[None].repeat(2, 0) * top).astype(dtype)


@pytest.mark.parametrize("fluorescence", [False, True])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_sections_in_reading_order_without_dust(fluorescence, dtype):
    sections = find_sections(slide_with_blobs(fluorescence, dtype))
    assert sections.max() == 3
    assert sections[90, 90] == 1 and sections[80, 300] == 2 and sections[220, 200] == 3
    assert sections[281, 11] == 0


def test_blank_glass_has_no_sections():
    assert find_sections(np.full((3, 100, 100), 240, np.uint8)).max() == 0


def test_to_unit_scales_by_dtype_and_cleans_floats():
    assert to_unit(np.array([255], np.uint8))[0] == 1.0
    assert to_unit(np.array([65535], np.uint16))[0] == 1.0
    out = to_unit(np.array([np.nan, np.inf, 0.5], np.float32))
    assert np.isfinite(out).all() and out[2] == 0.5


def test_sections_on_a_mostly_glass_slide_match_the_small_slide(tmp_path):
    """The same four sections on a slide 100 times larger (glass never written): found again inside
    the tissue's box at the level a slide of just this tissue is seen at, so they stay four and
    cover the same tiles."""
    image, _ = synth_slide(4, (1536, 2048), 8.0, seed=7)
    write_sparse_slide(tmp_path / "small.zarr", image, 1, 8.0)
    write_sparse_slide(tmp_path / "big.zarr", image, 10, 8.0)
    small, big = open_slide(tmp_path / "small.zarr"), open_slide(tmp_path / "big.zarr")
    assert len(list((tmp_path / "big.zarr" / "0").rglob("*"))) < 100  # sparse: a few chunks on disk
    s_small = find_tissue(small)[0].sections
    s_big = find_tissue(big)[0].sections
    assert s_small.count == s_big.count == 4
    tiles_small = tile_grid(small.yx_shape(0), 128, 32, s_small)
    tiles_big = tile_grid(big.yx_shape(0), 128, 32, s_big)
    assert len(tiles_small) == len(tiles_big)
    # the same boxes, shifted
    sizes = [
        [(y1 - y0, x1 - x0) for y0, y1, x0, x1 in m.boxes(s.yx_shape(0)).values()]
        for m, s in ((s_small, small), (s_big, big))
    ]
    assert sizes[0] == sizes[1]


@pytest.mark.parametrize("gap", [2, 5, 6, 7, 30])
def test_sections_grow_as_expand_labels_grows_them(gap):
    """The fast dilation must give what skimage's nearest-section growth gives, also when two
    sections come close enough to contend for the glass between them."""
    labels = np.zeros((60, 120), np.uint16)
    labels[10:50, 10:40] = 1
    labels[20:30, 40 + gap : 70] = 2
    labels[45:55, 90:110] = 3
    np.testing.assert_array_equal(grow(labels, 3), expand_labels(labels, 3))


def test_growing_and_hole_filling_equal_skimage_and_scipy_on_random_masks():
    """Sparse blobs (boxes apart: the dilation) and dense ones (boxes meeting: nearest section),
    at several margins; holes filled as ndimage fills them, also holes touching nothing but tissue."""
    rng = np.random.default_rng(0)
    paths = set()
    for density in (0.002, 0.01, 0.3, 0.5, 0.7):
        for _ in range(20):
            seeds = rng.random((50, 70)) < density
            mask = ndimage.binary_dilation(seeds, iterations=int(rng.integers(1, 4))) if density < 0.1 else seeds
            np.testing.assert_array_equal(fill_holes(mask), ndimage.binary_fill_holes(mask))
            labels = ndimage.label(mask)[0].astype(np.uint16)
            for margin in (1, 3, 5):
                np.testing.assert_array_equal(grow(labels, margin), expand_labels(labels, margin))
                paths.add(_boxes_meet(labels, margin))
    assert paths == {True, False}


def glass_with_a_sliver_of_tissue(share: float, fluorescence: bool, seed: int = 0):
    """A picture of noisy, unevenly lit glass holding one small section that covers `share` of it,
    and its true tissue mask; bright glass, or dark glass (fluorescence: the picture inverted)."""
    rng = np.random.default_rng(seed)
    image, truth = synth_slide(1, (768, 1024), 8.0, seed=4)
    ys, xs = np.nonzero(truth)
    crop, tissue = (
        image[:, ys.min() : ys.max() + 1 : 6, xs.min() : xs.max() + 1 : 6],
        truth[ys.min() : ys.max() + 1 : 6, xs.min() : xs.max() + 1 : 6] > 0,
    )
    side = int(np.sqrt(tissue.sum() / share))
    light = 60 * ndimage.gaussian_filter(rng.normal(0, 1, (side, side)).astype(np.float32), 60)
    glass = np.array([235.0, 232.0, 228.0], np.float32)[:, None, None] + rng.normal(0, 2.5, (3, side, side)) + light
    picture = np.clip(glass, 0, 255).astype(np.uint8)
    y, x = side // 3, side // 2
    picture[:, y : y + tissue.shape[0], x : x + tissue.shape[1]][:, tissue] = crop[:, tissue]
    mask = np.zeros((side, side), bool)
    mask[y : y + tissue.shape[0], x : x + tissue.shape[1]] = tissue
    return (255 - picture if fluorescence else picture), mask


@pytest.mark.parametrize("share", [0.0005, 0.002])
@pytest.mark.parametrize("fluorescence", [False, True])
def test_a_section_covering_a_sliver_of_the_glass_is_found(share, fluorescence):
    picture, truth = glass_with_a_sliver_of_tissue(share, fluorescence)
    assert truth.mean() == pytest.approx(share, rel=0.05)
    sections = find_sections(picture)
    assert sections.max() == 1
    found = sections > 0
    assert (found & truth).sum() > 0.95 * truth.sum() and found.sum() < 2 * truth.sum()


@pytest.mark.parametrize("fluorescence", [False, True])
def test_a_picture_that_is_nearly_all_tissue_is_all_tissue(fluorescence):
    """A crop inside a section, 98 % tissue: Otsu alone would split the tissue into light and dark."""
    image, truth = synth_slide(1, (1024, 1400), 8.0, seed=4)
    ys, xs = np.nonzero(truth)
    cy, cx = int(ys.mean()), int(xs.mean())
    crop, tissue = (
        image[:, cy - 200 : cy + 200, cx - 260 : cx + 260],
        truth[cy - 200 : cy + 200, cx - 260 : cx + 260] > 0,
    )
    assert tissue.mean() > 0.95
    found = tissue_mask(255 - crop if fluorescence else crop, brightfield=not fluorescence)
    assert dice(found, tissue) > 0.98


def a_section_filling_its_picture(fluorescence: bool) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic section cropped with a narrow margin of glass, so that tissue covers about
    two thirds of the picture (an exported single section), and its true tissue mask. Its stain is
    darkened (gamma 2) so that the tissue lies on the dark side of the picture's range, as DAB
    does; fluorescence is that picture inverted."""
    image, truth = synth_slide(1, (768, 1024), 8.0, seed=4)
    ys, xs = np.nonzero(truth)
    window = (slice(ys.min() - 6, ys.max() + 7), slice(xs.min() - 6, xs.max() + 7))
    crop = (255 * (image[:, window[0], window[1]] / 255.0) ** 2).astype(np.uint8)
    return (255 - crop if fluorescence else crop), truth[window] > 0


@pytest.mark.parametrize("fluorescence", [False, True])
def test_a_section_filling_most_of_its_picture_is_found_without_being_told_the_glass(fluorescence):
    """The picture's median is tissue, not glass: glass is told by the picture's edge instead."""
    picture, truth = a_section_filling_its_picture(fluorescence)
    assert 0.55 < truth.mean() < 0.8
    sections = find_sections(picture)
    assert sections.max() == 1
    found = sections > 0
    assert dice(found, truth) > 0.95
    assert bright_glass(picture) is (not fluorescence)


@pytest.mark.parametrize("fluorescence", [False, True])
def test_a_section_filling_most_of_a_stored_slide_is_one_section_with_glass_around(tmp_path, fluorescence):
    picture, truth = a_section_filling_its_picture(fluorescence)
    write_slide(tmp_path / "s.zarr", picture, truth.astype(np.uint8), 8.0)
    (plane,) = find_tissue(open_slide(tmp_path / "s.zarr"))
    assert plane.sections.count == 1
    glass_grey = float(np.mean(plane.glass))  # in [0, 1]
    assert glass_grey < 0.2 if fluorescence else glass_grey > 0.8


def test_a_sliver_of_tissue_on_a_whole_sparse_slide_is_one_section(tmp_path):
    """0.04 % of a slide stored sparsely (the glass zarr's fill value), found on the slide itself."""
    image, truth = synth_slide(1, (768, 1024), 8.0, seed=4)
    write_sparse_slide(tmp_path / "s.zarr", image, 32, 8.0)
    (plane,) = find_tissue(open_slide(tmp_path / "s.zarr"))
    assert plane.sections.count == 1


def with_scanner_black(image: np.ndarray) -> np.ndarray:
    """`image` with black (every channel 0) where a scanner scanned nothing: a strip down the right
    and one along the bottom, as a mosaic scanner leaves outside its scan regions."""
    black = image.copy()
    black[:, -60:, :] = 0
    black[:, :, -80:] = 0
    return black


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_scanner_black_on_a_brightfield_slide_is_glass(dtype):
    image, truth = synth_slide(2, (768, 1024), 16.0, seed=1)
    image = (image.astype(np.float64) / 255 * np.iinfo(dtype).max).astype(dtype)
    black = with_scanner_black(image)
    assert scanner_black(black).sum() == (~black.any(axis=0)).sum() and not scanner_black(image).any()
    plain, found = find_sections(image), find_sections(black)
    assert found.max() == plain.max() == 2
    assert (found > 0).sum() == pytest.approx((plain > 0).sum(), rel=0.01)
    assert not (found[-60:, :] > 0).any() and not (found[:, -80:] > 0).any()
    assert bright_glass(black)
    np.testing.assert_allclose(glass_colour(black, found), glass_colour(image, plain), atol=0.01)


@pytest.mark.parametrize("stain", [1.0, 2.0])
def test_exactly_black_glass_of_a_fluorescence_scan_stays_glass(stain):
    """Background-subtracted fluorescence, or a white-balanced brightfield scan inverted: the glass
    is exactly 0 and borders the tissue's edge, bright where the stain was dark (`stain`: the
    brightfield's gamma), and it is glass, not a scan's gap."""
    image, truth = synth_slide(2, (768, 1024), 16.0, seed=1)
    grey = 255 * (1 - (image.mean(axis=0) / 255) ** stain)
    fluorescence = np.where(truth > 0, grey, 0).astype(np.uint8)[None]
    assert not scanner_black(fluorescence).any()
    sections = find_sections(fluorescence)
    assert sections.max() == 2 and not bright_glass(fluorescence)
    assert dice(sections > 0, truth > 0) > 0.95


def test_a_white_balanced_section_inverted_to_fluorescence_keeps_its_glass():
    """A real DAB section (GLTa's s119) on pure white glass, its grey inverted: the glass is then
    exactly 0 and borders tissue that is bright at its stained edge. It is glass, not a scan's gap."""
    from sebre_ij.datasets import shared_examples

    (section,) = [e for e in shared_examples(shared_set("glta")).examples if e.name == "glta_s119"]
    fluorescence = 1.0 - section.image.mean(axis=0, keepdims=True)
    assert (fluorescence == 0).mean() > 0.2
    assert not scanner_black(fluorescence).any() and not bright_glass(fluorescence)
    found, truth = find_sections(fluorescence) > 0, section.classes > 0
    assert dice(found, truth) > 0.9
