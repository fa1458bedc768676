"""The tile grid: cores partition the level; only tissue tiles are kept."""

import numpy as np
import pytest

from sebre_ij.tiles import resample_nearest, tile_grid
from sebre_ij.tissue import SectionMap


@pytest.mark.parametrize(
    "shape, size, overlap", [((100, 130), 32, 8), ((64, 64), 64, 16), ((257, 300), 64, 0), ((20, 20), 64, 16)]
)
def test_cores_partition_the_level(shape, size, overlap):
    cover = np.zeros(shape, int)
    for t in tile_grid(shape, size, overlap):
        cover[t.core] += 1
        assert t.core[0].start >= t.y and t.core[0].stop <= t.y + size
        assert t.core[1].start >= t.x and t.core[1].stop <= t.x + size
    assert (cover == 1).all()


def test_only_tissue_tiles_are_kept():
    sections = np.zeros((10, 10), np.uint16)
    sections[0:2, 0:2] = 1  # tissue in the top-left 20 % of each side
    all_tiles = tile_grid((1000, 1000), 100, 20)
    kept = tile_grid((1000, 1000), 100, 20, SectionMap(sections, (0, 0), sections.shape))
    assert 0 < len(kept) < len(all_tiles)
    assert all(t.y < 200 and t.x < 200 for t in kept)


def test_resample_nearest_up_and_down():
    src = np.arange(16).reshape(4, 4)
    up = resample_nearest(src, (4, 4), 0, 8, 0, 8, (8, 8))
    np.testing.assert_array_equal(up[::2, ::2], src)
    np.testing.assert_array_equal(up[1::2, 1::2], src)
    down = resample_nearest(src, (4, 4), 0, 2, 0, 2, (2, 2))
    np.testing.assert_array_equal(down, src[1::2, 1::2])


def test_a_cropped_section_map_reads_like_the_whole_one():
    """A map holding only the tissue's box (as on a mostly-glass slide) answers like the full map."""
    rng = np.random.default_rng(0)
    whole = np.zeros((60, 80), np.uint16)
    whole[20:35, 30:55] = rng.integers(1, 3, (15, 25))
    full, crop = SectionMap(whole, (0, 0), whole.shape), SectionMap(whole[18:40, 25:60], (18, 25), whole.shape)
    level = (600, 800)
    for ys, xs in [
        (slice(0, 600), slice(0, 800)),
        (slice(190, 360), slice(280, 301)),
        (slice(0, 150), slice(0, 250)),
        (slice(345, 352), slice(540, 560)),
    ]:
        np.testing.assert_array_equal(crop.sample(ys, xs, level), full.sample(ys, xs, level))
        np.testing.assert_array_equal(
            full.sample(ys, xs, level),
            resample_nearest(whole, whole.shape, ys.start, ys.stop, xs.start, xs.stop, level),
        )
        assert crop.touches(ys, xs, level) == full.touches(ys, xs, level)
    assert crop.count == full.count == 2


def test_a_section_that_fits_one_tile_sits_in_its_middle():
    """As training shows whole sections, inference must not put a small section in a tile's corner."""
    sections = np.zeros((100, 100), np.uint16)
    sections[5:30, 70:100] = 1  # 250 x 300 px at the right edge of a 1000 x 1000 level
    (tile,) = tile_grid((1000, 1000), 400, 64, SectionMap(sections, (0, 0), sections.shape))
    assert (tile.y + 200, tile.x + 200) == (175, 850) and tile.section == 1  # past both edges: padded
    assert tile.core == (slice(0, 375), slice(650, 1000))  # the tile, clipped to the level


def test_each_section_has_its_own_grid_and_its_cores_partition_its_box():
    sections = np.zeros((100, 120), np.uint16)
    sections[10:60, 5:50] = 1
    sections[20:90, 55:115] = 2
    smap = SectionMap(sections, (0, 0), sections.shape)
    shape, size, overlap = (500, 600), 64, 16
    tiles = tile_grid(shape, size, overlap, smap)
    assert {t.section for t in tiles} == {1, 2}
    level = resample_nearest(sections, sections.shape, 0, 500, 0, 600, shape)
    for section, (y0, y1, x0, x1) in smap.boxes(shape).items():
        assert (y0, y1, x0, x1) == {1: (50, 300, 25, 250), 2: (100, 450, 275, 575)}[section]
        cover = np.zeros(shape, int)
        for t in tiles:
            if t.section == section:
                cover[t.core] += 1
                assert smap.touches(*t.core, shape, section)
        assert (cover[level == section] == 1).all() and cover.max() == 1
        # the grid is centred on the box: as much tile hangs over each side of it
        own = [t for t in tiles if t.section == section]
        top, bottom = y0 - min(t.y for t in own), max(t.y for t in own) + size - y1
        left, right = x0 - min(t.x for t in own), max(t.x for t in own) + size - x1
        assert abs(top - bottom) <= 1 and abs(left - right) <= 1
