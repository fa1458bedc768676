"""Stitching with an oracle predictor: the layer equals the truth exactly, whatever the tiling."""

import numpy as np
import pytest

from sebre_ij.labels import class_base, create_layer, open_labels, read_plane
from sebre_ij.model import ModelCard
from sebre_ij.segment import RegionStats, run_tiles
from sebre_ij.slide import open_slide
from sebre_ij.synth import CLASSES, make_slide_store, write_slide
from sebre_ij.tiles import tile_grid
from sebre_ij.tissue import tissue_sections

from conftest import oracle


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
    card = ModelCard("tiny_fpn", names, [c for _, c in CLASSES], 16.0, slide.channels, [0.5] * 3, [0.2] * 3, tile, overlap)
    layer = create_layer(slide, f"oracle{tile}", level, overwrite=True)
    stats, n_tiles, n_sections = run_tiles(slide, layer, card, oracle(truth))
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
    assert set(np.unique(values[truth == 3] // base)) == {2} and set(np.unique(values[(truth == 1) | (truth == 2)] // base)) == {1}


def test_region_stats_count_pixels_and_sum_scores_per_label_value():
    stats = RegionStats()
    stats.add(np.array([[0, 5, 5], [7, 5, 0]], np.uint32), np.array([[0.9, 0.5, 0.25], [1.0, 0.25, 0.3]], np.float32))
    stats.add(np.array([[7]], np.uint32), np.array([[0.5]], np.float32))
    assert stats.count == {5: 3, 7: 2}
    assert stats.score == pytest.approx({5: 1.0, 7: 1.5})
