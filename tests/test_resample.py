"""Slides with no level at the model's µm/px: tiles resampled on the fly from the nearest finer
level, mapped back without seams or gaps; slides without a pyramid; --pixel-size."""

import shutil
import subprocess

import numpy as np
import pytest
import zarr
from conftest import SEBRE, oracle

from sebre_ij.infer import read_tile
from sebre_ij.labels import class_base, open_labels, read_plane
from sebre_ij.layer import create_layer
from sebre_ij.model import ModelCard
from sebre_ij.segment import run_tiles
from sebre_ij.slide import inference_level, open_slide
from sebre_ij.stores import write_slide
from sebre_ij.synth import CLASSES, synth_slide
from sebre_ij.tiles import Grid, Tile, tile_grid
from sebre_ij.tissue import tissue_sections

FACTORS = [1.0, 1.37, 2.5, 0.7, 5.0]


@pytest.mark.parametrize("factor", FACTORS)
def test_mapped_cores_partition_the_source_level(factor):
    grid = Grid((517, 833), factor)
    cover = np.zeros(grid.source, np.int32)
    for tile in tile_grid(grid.shape, 64, 16):
        ys, xs = grid.source_window(tile.core)
        cover[ys, xs] += 1
        # every source pixel of the window is taken from inside its tile
        rows = grid.tile_index(ys, 0, tile.y, tile.size)
        assert rows.size == 0 or (rows.min() >= 0 and rows.max() < tile.size)
    assert (cover == 1).all()


@pytest.mark.parametrize("factor", [1.37, 2.5, 0.7, 5.0])
def test_resampled_tile_samples_the_image_at_pixel_centres(factor):
    """A linear ramp survives smoothing and bilinear sampling: the tile must hold the ramp's
    value at each inference pixel's centre (away from the level's edges)."""
    h, w = 700, 900
    yy, xx = np.mgrid[0:h, 0:w]
    image = (20 * yy + 30 * xx).astype(np.uint16)[None]
    tile = Tile(40, 50, 64, (slice(40, 104), slice(50, 114)))
    got = read_tile(image, "cyx", tile, z=0, glass=np.zeros(1, np.float32), factor=factor)[0]
    cy = (tile.y + np.arange(64) + 0.5) * factor - 0.5
    cx = (tile.x + np.arange(64) + 0.5) * factor - 0.5
    want = (20 * cy[:, None] + 30 * cx[None, :]) / 65535
    inside = (
        (cy[:, None] > 2 * factor)
        & (cy[:, None] < h - 2 * factor)
        & (cx[None, :] > 2 * factor)
        & (cx[None, :] < w - 2 * factor)
    )
    np.testing.assert_allclose(got[inside], want[inside], atol=1e-4)
    assert inside.sum() > 1000


def test_tile_past_the_edge_is_glass():
    image = np.full((1, 100, 100), 1000, np.uint16)
    tile = Tile(0, 0, 64, (slice(0, 64), slice(0, 64)))
    got = read_tile(image, "cyx", tile, z=0, glass=np.array([0.9], np.float32), factor=2.5)[0]
    assert np.allclose(got[:39, :39], 1000 / 65535) and np.allclose(got[41:, :], 0.9) and np.allclose(got[:, 41:], 0.9)


@pytest.mark.parametrize("factor", [1.0, 2.5])
def test_tile_before_the_level_reads_the_same_pixels_shifted(factor):
    """A tile centred on a section near the slide's corner starts before the level: glass there,
    and the image where it overlaps, sampled as a tile inside the level would sample it."""
    rng = np.random.default_rng(1)
    image = rng.integers(0, 65535, (1, 300, 300), dtype=np.uint16)
    fill = np.array([0.5], np.float32)
    before = read_tile(image, "cyx", Tile(-10, -7, 64, (slice(0, 54), slice(0, 57))), z=0, glass=fill, factor=factor)[0]
    inside = read_tile(image, "cyx", Tile(0, 0, 64, (slice(0, 64), slice(0, 64))), z=0, glass=fill, factor=factor)[0]
    assert np.all(before[:10] == 0.5) and np.all(before[:, :7] == 0.5)
    # away from the smoothing's edge
    np.testing.assert_allclose(before[10 + 3 :, 7 + 3 :], inside[3:54, 3:57], atol=1e-6)


def test_level_choice_resamples_only_past_ten_percent(tmp_path):
    image, labels = synth_slide(1, (512, 512), 4.0, 0)
    write_slide(tmp_path / "s.zarr", image, labels, 4.0, levels=3)  # 4, 8, 16 µm/px
    slide = open_slide(tmp_path / "s.zarr")
    assert inference_level(slide, 8.5) == (1, 1.0)  # within 10 %: used as it is
    assert inference_level(slide, 12.0) == (1, 1.5)  # from the finer 8 µm/px level
    assert inference_level(slide, 64.0) == (2, 4.0)
    assert inference_level(slide, 2.0) == (0, 0.5)  # finer than every level: upsampled
    assert inference_level(open_slide(tmp_path / "s.zarr", pixel_size=1.0), 2.0) == (1, 1.0)


def oracle_on_grid(truth: np.ndarray, grid: Grid):
    """Truth taken at each inference pixel's centre; the predictor returns it per tile."""
    rows = np.minimum(((np.arange(grid.shape[0]) + 0.5) * grid.factor).astype(int), truth.shape[0] - 1)
    cols = np.minimum(((np.arange(grid.shape[1]) + 0.5) * grid.factor).astype(int), truth.shape[1] - 1)
    virtual = truth[np.ix_(rows, cols)]

    return oracle(virtual), virtual


@pytest.mark.parametrize("factor, tile, overlap", [(1.37, 64, 16), (2.5, 96, 40), (0.8, 128, 0)])
def test_oracle_stitching_on_a_resampled_grid(tmp_path, factor, tile, overlap):
    image, labels = synth_slide(2, (512, 1024), 16.0, 5)
    write_slide(tmp_path / "s.zarr", image, labels, 16.0, levels=1)
    slide = open_slide(tmp_path / "s.zarr")
    truth = read_plane(open_labels(slide, "truth"), slide, 0).astype(np.uint8)
    grid = Grid(truth.shape, factor)
    names = [n for n, _ in CLASSES]
    card = ModelCard(
        "tiny_fpn", names, [c for _, c in CLASSES], 16.0 * factor, slide.channels, [0.5] * 3, [0.2] * 3, tile, overlap
    )
    predict, virtual = oracle_on_grid(truth, grid)
    layer = create_layer(slide, "oracle", 0)
    run_tiles(slide, layer, card, predict, factor=factor)
    values = np.asarray(layer.array(0)[:])
    back_r = np.clip(np.floor((np.arange(truth.shape[0]) + 0.5) / factor).astype(int), 0, grid.shape[0] - 1)
    back_c = np.clip(np.floor((np.arange(truth.shape[1]) + 0.5) / factor).astype(int), 0, grid.shape[1] - 1)
    _, _, sections = tissue_sections(slide)
    inside = sections.sample(slice(0, truth.shape[0]), slice(0, truth.shape[1]), truth.shape) > 0
    want = np.where(inside, virtual[np.ix_(back_r, back_c)], 0)  # labels carry a section: none outside tissue
    np.testing.assert_array_equal(values % class_base(len(names)), want)


def segment(store, model, *extra):
    cmd = [*SEBRE, "segment", str(store), "--model", str(model), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def test_slide_without_pyramid_and_pixel_size_override(trained_slide, tmp_path):
    """The model works at 16 µm/px; one-level slides at 11 µm/px are resampled (factor 16/11).
    The same pixels with metadata saying 1 µm/px give identical labels under --pixel-size 11."""
    slide, model = trained_slide
    image = np.asarray(zarr.open_group(str(slide), mode="r")["s0"][:])
    labels = np.asarray(zarr.open_group(str(slide), mode="r")["labels/truth/s0"][:])
    write_slide(tmp_path / "right.zarr", image, labels, 11.0, levels=1)
    shutil.copytree(tmp_path / "right.zarr", tmp_path / "wrong.zarr")
    write_slide(tmp_path / "unit.zarr", image, labels, 1.0, levels=1)
    ok = segment(tmp_path / "right.zarr", model, "--rois", str(tmp_path / "r.zip"))
    assert ok.returncode == 0, ok.stderr
    assert "from level 0 at 16" in ok.stdout
    values = np.asarray(zarr.open_group(str(tmp_path / "right.zarr"), mode="r")["labels/sebre/s0"][:])
    assert (values > 0).mean() > 0.02 and values.shape == labels.shape
    assert open_slide(tmp_path / "right.zarr").label_names() == ["truth", "sebre"]
    fixed = segment(tmp_path / "unit.zarr", model, "--pixel-size", "11")
    assert fixed.returncode == 0, fixed.stderr
    again = np.asarray(zarr.open_group(str(tmp_path / "unit.zarr"), mode="r")["labels/sebre/s0"][:])
    np.testing.assert_array_equal(again, values)
    bad = segment(tmp_path / "wrong.zarr", model, "--pixel-size", "-3")
    assert bad.returncode == 2 and "--pixel-size" in bad.stderr
