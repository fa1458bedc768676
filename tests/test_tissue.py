"""Tissue and sections on a coarse level: brightfield or fluorescence, reading order, dust."""

import numpy as np
import pytest

from sebre_ij.tissue import find_sections, to_unit


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
