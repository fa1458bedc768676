"""synth.py: synthetic slides, deterministic and brain-like."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from sebre_ij.synth import CLASSES, synth_section, synth_slide

SMALL = {"sections": 4, "size": (1024, 1536), "pixel_size": 12.0}


@pytest.fixture(scope="module")
def slide():
    return synth_slide(seed=3, **SMALL)


def test_classes_table():
    assert CLASSES[0] == ("background", (0, 0, 0))
    assert CLASSES[12] == ("other_brain", (128, 128, 128))
    assert len({name for name, _ in CLASSES}) == len(CLASSES) == 13


def test_deterministic_for_a_seed(slide):
    image, labels = synth_slide(seed=3, **SMALL)
    assert np.array_equal(image, slide[0]) and np.array_equal(labels, slide[1])
    other, _ = synth_slide(seed=4, **SMALL)
    assert not np.array_equal(other, image)
    a = synth_section((300, 400), np.random.default_rng(7))
    b = synth_section((300, 400), np.random.default_rng(7))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_shapes_and_dtypes(slide):
    image, labels = slide
    assert image.shape == (3, *SMALL["size"]) and image.dtype == np.uint8
    assert labels.shape == SMALL["size"] and labels.dtype == np.uint8
    assert labels.max() < len(CLASSES)
    image, labels = synth_section((300, 400), np.random.default_rng(0))
    assert image.shape == (3, 300, 400) and labels.shape == (300, 400)
    assert image.dtype == labels.dtype == np.uint8


def test_every_section_has_most_regions(slide):
    _, labels = slide
    sections, count = ndi.label(labels > 0)
    assert count == SMALL["sections"]
    for k in range(1, count + 1):
        assert len(np.unique(labels[sections == k])) >= 6


@pytest.mark.parametrize("seed", range(6))
def test_regions_are_solid_blobs(seed):
    _, labels = synth_section((450, 600), np.random.default_rng(seed))
    present = [k for k in np.unique(labels) if k]
    assert len(present) >= 6
    for k in present:
        pieces, _ = ndi.label(labels == k)
        sizes = np.bincount(pieces.ravel())[1:]
        assert sizes.max() >= 0.98 * sizes.sum(), CLASSES[k][0]


def test_glass_is_bright_and_tissue_darker(slide):
    image, labels = slide
    glass = image[:, labels == 0].astype(float)
    tissue = image[:, labels > 0].astype(float)
    assert 230 <= glass.mean() <= 252 and glass.std() < 6
    assert tissue.mean() < glass.mean() - 40
    # stained, not grey: brightfield stains absorb green more than red
    assert tissue[1].mean() < tissue[0].mean()


def test_sections_vary(slide):
    _, labels = slide
    sections, count = ndi.label(labels > 0)
    areas = [np.bincount(labels[sections == k], minlength=len(CLASSES)) for k in range(1, count + 1)]
    assert len({tuple(a) for a in areas}) == count
