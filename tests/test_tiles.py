"""The tile grid: cores partition the level; only tissue tiles are kept."""

import numpy as np
import pytest

from sebre_ij.tiles import resample_nearest, tile_grid
from sebre_ij.tissue import SectionMap


@pytest.mark.parametrize("shape, size, overlap", [((100, 130), 32, 8), ((64, 64), 64, 16), ((257, 300), 64, 0), ((20, 20), 64, 16)])
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
    for ys, xs in [(slice(0, 600), slice(0, 800)), (slice(190, 360), slice(280, 301)), (slice(0, 150), slice(0, 250)), (slice(345, 352), slice(540, 560))]:
        np.testing.assert_array_equal(crop.sample(ys, xs, level), full.sample(ys, xs, level))
        np.testing.assert_array_equal(full.sample(ys, xs, level), resample_nearest(whole, whole.shape, ys.start, ys.stop, xs.start, xs.stop, level))
        assert crop.touches(ys, xs, level) == full.touches(ys, xs, level)
    assert crop.count == full.count == 2
