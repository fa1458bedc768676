"""The tile grid: cores partition the level; only tissue tiles are kept."""

import numpy as np
import pytest

from sebre_ij.tiles import resample_nearest, tile_grid


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
    kept = tile_grid((1000, 1000), 100, 20, sections)
    assert 0 < len(kept) < len(all_tiles)
    assert all(t.y < 200 and t.x < 200 for t in kept)


def test_resample_nearest_up_and_down():
    src = np.arange(16).reshape(4, 4)
    up = resample_nearest(src, (4, 4), 0, 8, 0, 8, (8, 8))
    np.testing.assert_array_equal(up[::2, ::2], src)
    np.testing.assert_array_equal(up[1::2, 1::2], src)
    down = resample_nearest(src, (4, 4), 0, 2, 0, 2, (2, 2))
    np.testing.assert_array_equal(down, src[1::2, 1::2])
