"""outlines.py: label images to polygons in ImageJ's pixel-corner convention, parts and holes,
scaling to level 0, and simplification within its tolerance."""

import numpy as np
import pytest
from skimage.draw import disk
from skimage.measure import points_in_poly

from sebre_ij.outlines import polygon_area, regions_from_labels

PROPS = {
    1: {"name": "cortex", "class": 2, "section": 1, "color": (10, 20, 30), "score": 0.75},
    2: {"name": "hippocampus", "class": 300, "section": 2, "color": (200, 100, 50)},
}


def signed_area(ring):
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def single_region(labels, **kwargs):
    (region,) = regions_from_labels(labels, PROPS, **kwargs)
    return region


def test_rectangle_area_and_corners():
    labels = np.zeros((40, 80), np.int32)
    labels[10:30, 20:60] = 1
    region = single_region(labels, tolerance=0)
    assert region.name == "s1-cortex" and region.class_index == 2 and region.class_name == "cortex"
    assert region.section == 1 and region.color == (10, 20, 30) and region.score == 0.75
    ((exterior, holes),) = region.polygons
    assert holes == []
    # midpoint contour: touches the pixel-corner box, cuts each corner by a quarter pixel
    np.testing.assert_array_equal(exterior.min(axis=0), [20, 10])
    np.testing.assert_array_equal(exterior.max(axis=0), [60, 30])
    assert signed_area(exterior) == pytest.approx(800 - 0.5)
    simple = single_region(labels).polygons[0][0]
    assert len(simple) == 8 and signed_area(simple) == pytest.approx(800, abs=1)


def test_ring_with_hole_touching_border():
    labels = np.zeros((20, 20), np.int32)
    labels[:, :] = 1
    labels[5:15, 5:15] = 0
    ((exterior, (hole,)),) = single_region(labels).polygons
    assert exterior[:, 0].min() == 0 and exterior[:, 1].max() == 20  # closed along the image border
    assert signed_area(exterior) > 0 > signed_area(hole)
    assert polygon_area(single_region(labels).polygons) == pytest.approx(400 - 100, abs=1)


def test_parts_own_their_holes():
    labels = np.zeros((30, 50), np.int32)
    labels[2:22, 2:22] = 1  # part A with a hole ...
    labels[6:18, 6:18] = 0
    labels[10:14, 10:14] = 1  # ... and an island inside the hole
    labels[5:10, 30:45] = 1  # part B
    parts = single_region(labels).polygons
    assert sorted(len(holes) for _, holes in parts) == [0, 0, 1]
    for exterior, holes in parts:
        for hole in holes:
            assert points_in_poly(hole, exterior).all()
    assert polygon_area(parts) == pytest.approx(400 - 144 + 16 + 75, abs=2)


def test_single_pixel_is_a_centred_diamond():
    labels = np.zeros((5, 5), np.int32)
    labels[2, 3] = 1
    ((exterior, _),) = single_region(labels).polygons
    assert len(exterior) == 4
    np.testing.assert_allclose(exterior.mean(axis=0), [3.5, 2.5])
    assert signed_area(exterior) == pytest.approx(0.5)


def test_whole_image_region():
    labels = np.ones((6, 7), np.int32)
    ((exterior, _),) = single_region(labels, tolerance=0).polygons
    np.testing.assert_array_equal(exterior.min(axis=0), [0, 0])
    np.testing.assert_array_equal(exterior.max(axis=0), [7, 6])


def test_scale_and_offset_map_to_level0_beyond_16_bits():
    labels = np.zeros((10, 10), np.int32)
    labels[2:4, 3:6] = 1  # level-L pixels (2..3, 3..5) at 4x downsampling
    ((exterior, _),) = single_region(labels, scale=(4.0, 4.0), offset=(7.0, 100000.5), tolerance=0).polygons
    np.testing.assert_allclose(exterior.min(axis=0), [3 * 4 + 100000.5, 2 * 4 + 7.0])
    np.testing.assert_allclose(exterior.max(axis=0), [6 * 4 + 100000.5, 4 * 4 + 7.0])


def test_missing_values_and_properties():
    labels = np.zeros((6, 6), np.int64)
    labels[1, 1] = 2
    labels[4, 4] = 9  # no properties: defaults, section 0
    regions = regions_from_labels(labels, {**PROPS, 5: {"name": "never"}})
    assert [(r.value, r.name, r.section, r.score) for r in regions] == [
        (2, "s2-hippocampus", 2, None),
        (9, "s0-9", 0, None),
    ]
    assert regions_from_labels(np.zeros((3, 3), np.uint8), PROPS) == []
    with pytest.raises(ValueError, match="2D integer"):
        regions_from_labels(np.zeros((3, 3)), PROPS)


def distance_to_ring(points, ring):
    a, b = ring, np.roll(ring, -1, axis=0)
    ab, ap = b - a, points[:, None, :] - a
    t = np.clip((ap * ab).sum(-1) / (ab**2).sum(-1), 0, 1)
    return np.linalg.norm(ap - t[..., None] * ab, axis=-1).min(axis=1)


def test_simplification_stays_within_tolerance():
    labels = np.zeros((80, 80), np.int32)
    labels[disk((40, 38), 30)] = 1
    full = single_region(labels, tolerance=0).polygons[0][0]
    for tolerance in (0.4, 1.0, 3.0):
        simple = single_region(labels, tolerance=tolerance).polygons[0][0]
        assert len(simple) < len(full)
        assert distance_to_ring(full, simple).max() <= tolerance + 1e-9


def oblique_with_margins(shape=(40, 40)):
    """Label 1 on one side of a straight oblique line, 2 on the other, and margins that grow with
    the distance from it, as a model's class probabilities ramp across it (quantized as the
    layer stores them). Returns labels, margins and the line (a, b, c): a x + b y = c in pixel
    centres."""
    a, b = np.cos(0.4), np.sin(0.4)
    c = a * shape[1] / 2 + b * shape[0] / 2 + 0.3
    y, x = np.mgrid[: shape[0], : shape[1]]
    d = a * x + b * y - c
    margins = (1 + np.rint(np.clip(np.abs(0.2 * d), 0, 1) * 65534)).astype(np.uint16)
    return np.where(d > 0, 1, 2).astype(np.uint32), margins, (a, b, c)


def test_with_margins_the_outline_follows_the_line_the_probabilities_cross_with_sub_pixel_vertices():
    """Traced with the class margins, the boundary between two regions lies on the line where the
    model's probabilities cross (to rounding of the stored margins); traced from the labels alone
    it is a staircase of pixel edges, up to half a pixel off."""
    labels, margins, (a, b, c) = oblique_with_margins()

    def distances(found):
        ring = next(r for r in found if r.value == 1).polygons[0][0]
        cx, cy = ring[:, 0] - 0.5, ring[:, 1] - 0.5  # ImageJ corners to pixel centres
        inner = (cx > 1) & (cx < 38) & (cy > 1) & (cy < 38)  # the image border is not the boundary
        return np.abs(a * cx[inner] + b * cy[inner] - c)

    smooth = distances(regions_from_labels(labels, {}, tolerance=0, margins=margins))
    staircase = distances(regions_from_labels(labels, {}, tolerance=0))
    assert len(smooth) > 40 and smooth.max() < 0.01
    assert staircase.max() > 0.3
    assert not np.allclose(smooth, np.round(smooth * 2) / 2)  # sub-pixel, not on half pixels


def test_equal_or_unknown_margins_give_the_outline_of_the_labels():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, (30, 30)).astype(np.uint32)
    plain = regions_from_labels(labels, {})
    for margins in (np.full(labels.shape, 900, np.uint16), np.zeros(labels.shape, np.uint16)):
        same = regions_from_labels(labels, {}, margins=margins)
        assert [r.value for r in same] == [r.value for r in plain]
        for r, p in zip(same, plain):
            for (ext, holes), (ext0, holes0) in zip(r.polygons, p.polygons, strict=True):
                np.testing.assert_array_equal(ext, ext0)
                assert all(np.array_equal(h, h0) for h, h0 in zip(holes, holes0, strict=True))
