"""The label pyramid: one pixel rule, applied beside the model and by build_pyramid alike."""

import numpy as np
import pytest

from sebre_ij.layer import create_layer
from sebre_ij.pyramid import (
    RUN_CHUNKS,
    CoarserLevels,
    _blocks,
    _row_runs,
    _tiled_blocks,
    build_pyramid,
    sampled_from,
    source_ends,
    source_index,
)
from sebre_ij.slide import open_slide
from sebre_ij.stores import write_slide
from sebre_ij.tiles import resample_nearest


def test_pyramid_only_where_tiles_ran(tmp_path):
    """Glass chunks are neither computed nor written; where tiles ran, levels match the full build."""
    path = tmp_path / "s.zarr"
    write_slide(
        path, np.full((3, 1024, 1024), 240, np.uint8), np.zeros((1024, 1024), np.uint8), 1.0, chunk=128, levels=3
    )
    slide = open_slide(path)
    values = np.zeros(slide.yx_shape(1), np.uint32)
    values[20:100, 30:90] = 101
    sparse, full = create_layer(slide, "sparse", level=1), create_layer(slide, "full", level=1)
    for layer in (sparse, full):
        layer.write(0, (slice(0, 512), slice(0, 512)), values)
    sparse.mark_tiled((slice(0, 128), slice(0, 128)))  # one tile's core over the region
    build_pyramid(sparse)
    build_pyramid(full)
    for level in (0, 2):
        np.testing.assert_array_equal(sparse.array(level)[:], full.array(level)[:])
    level0 = path / "labels" / "sparse" / "s0"
    written = [p for p in level0.rglob("*") if p.is_file() and not p.name.startswith(".")]
    assert 0 < len(written) <= 4  # the 2 x 2 level-0 chunks under one level-1 chunk, of 64


@pytest.mark.parametrize("shape, chunk, level", [((1000, 1300), 96, 1), ((777, 1025), 64, 0), ((777, 1025), 64, 2)])
def test_pyramid_blocks_found_from_tiled_chunks_equal_a_full_scan(tmp_path, shape, chunk, level):
    """The blocks visited from the tiled chunks are exactly those a scan of every chunk would keep."""
    path = tmp_path / "s.zarr"
    write_slide(path, np.full((3, *shape), 240, np.uint8), np.zeros(shape, np.uint8), 1.0, chunk=chunk, levels=4)
    layer = create_layer(open_slide(path), "pred", level=level)
    rng = np.random.default_rng(3)
    h, w = layer.slide.yx_shape(level)
    for _ in range(4):
        y, x = int(rng.integers(0, h - 40)), int(rng.integers(0, w - 40))
        layer.mark_tiled((slice(y, y + 40), slice(x, x + 40)))
    src = layer.array(level)
    for i in range(len(layer.slide.levels)):
        dst = layer.array(i)

        def kept(b, dst=dst):
            return layer.any_tiled(source_ends(b[-2:], src.shape[-2:], dst.shape[-2:]))

        scanned = [b for b in _blocks(dst) if kept(b)]
        found = [b for b in _tiled_blocks(layer, dst) if kept(b)]
        assert sorted(map(str, found)) == sorted(map(str, scanned)) and scanned


def test_pyramid_tasks_merge_neighbouring_chunks_of_a_row():
    s = [slice(i * 4, i * 4 + 4) for i in range(40)]
    blocks = [(s[0], s[0]), (s[0], s[1]), (s[0], s[3]), (s[1], s[3]), (s[1], s[4])]
    blocks += [(s[2], x) for x in s[: RUN_CHUNKS + 2]]
    assert list(_row_runs(blocks)) == [
        (s[0], slice(0, 8)),
        (s[0], s[3]),
        (s[1], slice(12, 20)),
        (s[2], slice(0, 4 * RUN_CHUNKS)),
        (s[2], slice(4 * RUN_CHUNKS, 4 * RUN_CHUNKS + 8)),
    ]


def test_source_ends_are_the_first_and_last_source_pixels():
    """The pyramid decides which chunks a block reads from the ends alone: they must be exactly
    source_index's, up or down, on sizes that are not halves."""
    rng = np.random.default_rng(3)
    for _ in range(2000):
        src, dst = (int(n) for n in rng.integers(1, 5000, 2))
        start = int(rng.integers(0, dst))
        block = (slice(start, int(rng.integers(start + 1, dst + 1))),)
        index = source_index(block, (src,), (dst,))[0]
        assert source_ends(block, (src,), (dst,)) == [(index[0], index[-1])]


def test_sampled_from_gives_exactly_the_pixels_whose_source_lies_in_the_window():
    """What one chunk gives to another level (the stitcher's path) is source_index inverted."""
    rng = np.random.default_rng(5)
    for _ in range(2000):
        src, dst = (int(n) for n in rng.integers(1, 3000, 2))
        start = int(rng.integers(0, src))
        window = slice(start, int(rng.integers(start + 1, src + 1)))
        every = source_index((slice(0, dst),), (src,), (dst,))[0]
        wanted = np.flatnonzero((every >= window.start) & (every < window.stop))
        pixels, sources = sampled_from(window, src, dst)
        np.testing.assert_array_equal(pixels, wanted)
        np.testing.assert_array_equal(sources, every[wanted])


def test_resample_nearest_follows_the_pyramid_rule():
    """tiles.resample_nearest (readers of finished layers) repeats source_index's formula: the same pixels."""
    rng = np.random.default_rng(7)
    for _ in range(300):
        src_shape = tuple(int(n) for n in rng.integers(1, 400, 2))
        dst_shape = tuple(int(n) for n in rng.integers(1, 400, 2))
        src = rng.integers(0, 1000, src_shape)
        y0, x0 = (int(rng.integers(0, n)) for n in dst_shape)
        y1, x1 = int(rng.integers(y0 + 1, dst_shape[0] + 1)), int(rng.integers(x0 + 1, dst_shape[1] + 1))
        rows, cols = source_index((slice(y0, y1), slice(x0, x1)), src_shape, dst_shape)
        got = resample_nearest(src, src_shape, y0, y1, x0, x1, dst_shape)
        np.testing.assert_array_equal(got, src[np.ix_(rows, cols)])


@pytest.mark.parametrize("level", [1, 2])
def test_levels_written_beside_the_model_equal_build_pyramids(tmp_path, level):
    """One pixel rule: the coarser levels CoarserLevels writes from the inference level's chunks as
    they become final, in any order, are build_pyramid's, pixel for pixel, on levels that are not
    exact halves of each other."""
    path = tmp_path / "s.zarr"
    shape = (1001, 1301)
    write_slide(path, np.full((3, *shape), 240, np.uint8), np.zeros(shape, np.uint8), 1.0, chunk=96, levels=4)
    slide = open_slide(path)
    assert [slide.yx_shape(i) for i in range(4)] == [(1001, 1301), (500, 650), (250, 325), (125, 162)]
    values = np.random.default_rng(level).integers(0, 1000, slide.yx_shape(level)).astype(np.uint32)
    beside, after = create_layer(slide, "beside", level), create_layer(slide, "after", level)
    for layer in (beside, after):
        layer.write(0, tuple(slice(0, n) for n in values.shape), values)
    rows, cols = (-(-n // c) for n, c in zip(values.shape, beside.chunks))
    keys = [(r, c) for r in range(rows) for c in range(cols)]
    coarser = CoarserLevels(beside, 0, set(keys), set())
    for k in np.random.default_rng(0).permutation(len(keys)):
        key = keys[k]
        coarser.chunk_final(key, values[beside.chunk_window(key)])
    assert not coarser.open and not coarser.waiting  # every coarser chunk was completed and written
    assert beside.coarser_done
    build_pyramid(beside)  # the finer levels, and no coarser chunk again
    build_pyramid(after)
    for i in range(len(slide.levels)):
        np.testing.assert_array_equal(beside.array(i)[:], after.array(i)[:])
