"""Stitching with an oracle predictor: the layer equals the truth exactly, whatever the tiling."""

import numpy as np
import pytest
from conftest import oracle

from sebre_ij import pyramid
from sebre_ij.labels import class_base, open_labels, read_plane
from sebre_ij.layer import create_layer
from sebre_ij.model import ModelCard
from sebre_ij.pyramid import build_pyramid
from sebre_ij.segment import plane_tiles, run_tiles
from sebre_ij.slide import open_slide
from sebre_ij.stitch import ChunkWriter, RegionStats
from sebre_ij.stores import make_slide_store, write_slide
from sebre_ij.synth import CLASSES
from sebre_ij.tiles import Grid, tile_grid
from sebre_ij.tissue import tissue_sections


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("stitch") / "slide.zarr"
    make_slide_store(path, sections=2, size=(1024, 2048), pixel_size=8.0, seed=5)
    return path


@pytest.mark.parametrize("tile, overlap", [(64, 16), (96, 40), (128, 0), (200, 64)])
def test_oracle_stitching_reproduces_the_truth(slide_path, tile, overlap):
    slide = open_slide(slide_path)
    level = 1  # 512 x 1024: cortex and cerebellum span many 64 px tiles
    truth = read_plane(open_labels(slide, "truth"), slide, level).astype(np.uint8)
    names = [n for n, _ in CLASSES]
    card = ModelCard(
        "tiny_fpn", names, [c for _, c in CLASSES], 16.0, slide.channels, [0.5] * 3, [0.2] * 3, tile, overlap
    )
    layer = create_layer(slide, f"oracle{tile}", level, overwrite=True)
    run = run_tiles(slide, layer, card, oracle(truth))
    n_tiles, n_sections = run.tiles, run.sections
    values = np.asarray(layer.array(level)[:])
    base = class_base(len(names))
    assert n_sections == 2 and n_tiles > 4
    np.testing.assert_array_equal(values % base, truth)  # every pixel, seams included
    sections = values // base
    assert set(np.unique(sections[truth > 0])) == {1, 2}
    for cls in np.unique(truth[truth > 0]):  # one region per class and section: no region cut in two
        assert len(np.unique(values[truth == cls])) == len(np.unique(sections[truth == cls]))


def test_a_section_inside_another_sections_box_keeps_its_own_labels(tmp_path):
    """A small section in the bay of a C-shaped one: the C's tiles cover the small one's pixels,
    yet write only their own section's, so both come out exactly, each under its own number."""
    truth = np.zeros((256, 512), np.uint8)
    truth[20:230, 20:300] = 1
    truth[20:230, 160:300] = 2
    truth[70:180, 130:300] = 0  # the C's bay
    truth[100:150, 190:270] = 3  # the small section, 20 px from the C
    image = np.where(truth > 0, 90, 235).astype(np.uint8)[None].repeat(3, 0)
    write_slide(tmp_path / "c.zarr", image, truth, 8.0, levels=1)
    slide = open_slide(tmp_path / "c.zarr")
    names = [n for n, _ in CLASSES]
    card = ModelCard("tiny_fpn", names, [c for _, c in CLASSES], 8.0, slide.channels, [0.5] * 3, [0.2] * 3, 128, 32)
    layer = create_layer(slide, "oracle", 0)
    _, _, sections = tissue_sections(slide)
    tiles = tile_grid(truth.shape, 128, 32, sections)
    for mine, other in ((1, 2), (2, 1)):  # the case under test: each section's cores hold the other's pixels
        assert any(t.section == mine and (sections.sample(*t.core, truth.shape) == other).any() for t in tiles)
    run_tiles(slide, layer, card, oracle(truth))
    values = np.asarray(layer.array(0)[:])
    base = class_base(len(names))
    np.testing.assert_array_equal(values % base, truth)
    np.testing.assert_array_equal(np.unique(values // base)[1:], [1, 2])
    assert set(np.unique(values[truth == 3] // base)) == {2} and set(
        np.unique(values[(truth == 1) | (truth == 2)] // base)
    ) == {1}


def test_region_stats_count_pixels_and_sum_scores_per_label_value():
    stats = RegionStats()
    stats.add(np.array([[0, 5, 5], [7, 5, 0]], np.uint32), np.array([[0.9, 0.5, 0.25], [1.0, 0.25, 0.3]], np.float32))
    stats.add(np.array([[7]], np.uint32), np.array([[0.5]], np.float32))
    assert stats.count == {5: 3, 7: 2}
    assert stats.score == pytest.approx({5: 1.0, 7: 1.5})


def oracle_card(slide, tile, overlap):
    names = [n for n, _ in CLASSES]
    return ModelCard(
        "tiny_fpn", names, [c for _, c in CLASSES], 16.0, slide.channels, [0.5] * 3, [0.2] * 3, tile, overlap
    )


@pytest.fixture(scope="module")
def odd_slide(tmp_path_factory):
    """Levels that are not exactly twice each other (1001 x 2001, then 500 x 1000) and 96 px chunks:
    some level-0 chunks lie over two level-1 chunks."""
    path = tmp_path_factory.mktemp("odd") / "slide.zarr"
    make_slide_store(path, sections=2, size=(1001, 2001), pixel_size=8.0, seed=5, chunk=96)
    slide = open_slide(path)
    return slide, read_plane(open_labels(slide, "truth"), slide, 1).astype(np.uint8)


@pytest.fixture(scope="module")
def odd_reference(odd_slide):
    """The odd slide's level 1 as run_tiles stitches it (the truth, where the tissue mask sees tissue)."""
    slide, truth = odd_slide
    layer = create_layer(slide, "reference", 1, overwrite=True)
    run_tiles(slide, layer, oracle_card(slide, 96, 32), oracle(truth))
    values = np.asarray(layer.array(1)[:])
    assert (values % 100 == truth).mean() > 0.999
    return values


def test_finer_levels_without_class_margins_equal_nearest_upsampling(odd_slide):
    """An oracle gives labels and no class margins: level 0 is then level 1 upsampled by nearest
    pixel, exactly, on levels that are not exact halves."""
    slide, truth = odd_slide
    layer = create_layer(slide, "finer", 1, overwrite=True)
    run_tiles(slide, layer, oracle_card(slide, 96, 32), oracle(truth))
    level0 = layer.array(0)
    build_pyramid(layer)
    level1 = np.asarray(layer.array(1)[:])
    rows, cols = pyramid.source_index(
        (slice(0, level0.shape[0]), slice(0, level0.shape[1])), level1.shape, level0.shape
    )
    np.testing.assert_array_equal(np.asarray(level0[:]), level1[np.ix_(rows, cols)])


def test_coarser_levels_written_beside_the_model_equal_build_pyramids(odd_slide):
    """Tiles at level 0: the stitcher writes level 1 from its final chunks and level 2 from level 1's
    (none left to build_pyramid), and they equal build_pyramid's own, byte for byte, on levels that
    are not exact halves."""
    slide, _ = odd_slide
    truth = read_plane(open_labels(slide, "truth"), slide, 0).astype(np.uint8)
    layers = {}
    for name in ("beside", "after"):
        layer = layers[name] = create_layer(slide, name, 0, overwrite=True)
        run_tiles(slide, layer, oracle_card(slide, 96, 32), oracle(truth))
        if name == "after":
            layer.coarser_done.clear()  # build_pyramid makes them all again, from the store
        build_pyramid(layer)
    beside = layers["beside"]
    for level in (1, 2):
        dst = beside.array(level)
        blocks = [
            b
            for b in pyramid._tiled_blocks(beside, dst)  # those build_pyramid would make
            if beside.any_tiled(pyramid.source_ends(b, slide.yx_shape(0), dst.shape))
        ]
        assert blocks and all(pyramid._coarser_by_stitcher(beside, level, b, dst) for b in blocks)
        np.testing.assert_array_equal(beside.array(level)[:], layers["after"].array(level)[:])
    assert beside.array(2)[:].any()


def test_chunk_writer_holds_each_chunk_until_its_last_tile(odd_slide, odd_reference):
    """Chunks are written once, whole, when their last tile is stored; progress (durable) never
    counts a tile whose pixels are only in memory; past the memory cap, chunks are written early
    and merged when written again, with the same result."""
    slide, truth = odd_slide
    card = oracle_card(slide, 96, 32)
    results = {}
    for name, cap in (("roomy", 1 << 30), ("tight", 3 * 96 * 96 * 5)):  # 3 chunks at most
        layer = create_layer(slide, name, 1, overwrite=True)
        grid = Grid(slide.yx_shape(1))
        _, _, sections = tissue_sections(slide)
        plane = plane_tiles(layer, 0, grid, card, sections)
        writer = ChunkWriter(layer, plane, max_open_bytes=cap)
        predicted = list(oracle(truth)(list(plane.tiles), None))
        for i, result in enumerate(predicted):
            writer.put([result])
            assert len(writer.open) <= (3 if name == "tight" else len(writer.last))
            durable = writer.durable()
            assert durable <= i + 1
            stored = np.asarray(layer.array(1)[:])
            for tile in plane.tiles[:durable]:  # every tile before `durable` is in the store
                ys, xs = tile.core
                own = tile.owns(sections.sample(ys, xs, grid.source))
                np.testing.assert_array_equal((stored[ys, xs] % 100)[own], truth[ys, xs][own])
        assert writer.durable() == len(plane.tiles) and not writer.open
        results[name] = np.asarray(layer.array(1)[:])
    np.testing.assert_array_equal(results["tight"], odd_reference)
    np.testing.assert_array_equal(results["roomy"], odd_reference)


def test_chunk_writer_merges_chunks_shared_with_tiles_outside_its_range(odd_slide, odd_reference):
    """Two writers over halves of the tiles (as two cluster tasks): the chunks both touch keep
    both halves' pixels, whichever writes first."""
    slide, truth = odd_slide
    card = oracle_card(slide, 96, 32)
    layer = create_layer(slide, "halves", 1, overwrite=True)
    _, _, sections = tissue_sections(slide)
    plane = plane_tiles(layer, 0, Grid(slide.yx_shape(1)), card, sections)
    half = sum(t.section == 1 for t in plane.tiles) // 2  # mid-section: the halves share chunks
    predicted = list(oracle(truth)(list(plane.tiles), None))
    for start, stop in ((half, len(plane.tiles)), (0, half)):  # the later half first
        writer = ChunkWriter(layer, plane, start, stop)
        writer.put(predicted[start:stop])
        writer.close()
    np.testing.assert_array_equal(np.asarray(layer.array(1)[:]), odd_reference)
