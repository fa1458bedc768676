"""The label layer: value encoding, refusal to overwrite, the pyramid and its metadata."""

import numpy as np
import pytest
from ome_zarr_models.v04.image_label import ImageLabel as ImageLabelV04
from ome_zarr_models.v05.image_label import ImageLabel as ImageLabelV05

from sebre_ij.errors import UserError
from sebre_ij.labels import (RUN_CHUNKS, _blocks, _ran_blocks, _row_runs, _source_ends, _source_index, build_pyramid, check_name, class_base,
                             create_layer, encode, finish_layer, open_labels, read_plane)
from sebre_ij.slide import open_slide
from sebre_ij.synth import write_slide


def test_encoding_is_section_times_base_plus_class():
    assert class_base(13) == 100 and class_base(10) == 10 and class_base(2) == 10
    values = encode(np.array([[0, 1, 3]]), np.array([[5, 0, 5]]), 100)
    np.testing.assert_array_equal(values, [[0, 0, 305]])


@pytest.mark.parametrize("name", ["../x", "a/b", "", ".hidden", "x" * 200])
def test_bad_names_refused(name):
    with pytest.raises(UserError, match="valid path segment"):
        check_name(name)


@pytest.mark.parametrize("ngff", ["0.4", "0.5"])
def test_layer_pyramid_and_metadata(tmp_path, ngff):
    path = tmp_path / "s.zarr"
    image = np.full((3, 512, 768), 240, np.uint8)
    write_slide(path, image, np.zeros((512, 768), np.uint8), 1.0, ngff=ngff, chunk=128, levels=3)
    slide = open_slide(path)
    layer = create_layer(slide, "pred", level=1)
    values = np.zeros(slide.yx_shape(1), np.uint32)
    values[10:100, 20:200] = 101
    values[150:250, 50:80] = 205
    layer.write(0, (slice(0, values.shape[0]), slice(0, values.shape[1])), values)
    build_pyramid(layer)
    props = [{"label-value": 101, "name": "cortex", "class": 1, "section": 1}, {"label-value": 205, "name": "thalamus", "class": 5, "section": 2}]
    finish_layer(layer, props, [{"label-value": 101, "rgba": [230, 90, 60, 255]}, {"label-value": 205, "rgba": [0, 120, 60, 255]}])

    slide = open_slide(path)
    assert slide.label_names() == ["truth", "pred"]
    info = open_labels(slide, "pred")
    level0 = read_plane(info, slide, 0)
    np.testing.assert_array_equal(level0[::2, ::2], values)  # nearest upsampling repeats each pixel
    np.testing.assert_array_equal(read_plane(info, slide, 2), values[1::2, 1::2])
    assert info.properties[205]["name"] == "thalamus" and info.colors[101] == (230, 90, 60)
    model = ImageLabelV05 if ngff == "0.5" else ImageLabelV04
    model.from_zarr(slide.group["labels"]["pred"])
    with pytest.raises(UserError, match="--overwrite"):
        create_layer(open_slide(path), "pred", level=1)
    create_layer(open_slide(path), "pred", level=1, overwrite=True)
    assert open_slide(path).label_names() == ["truth"]  # unfinished again until its metadata is written


def test_pyramid_only_where_tiles_ran(tmp_path):
    """Glass chunks are neither computed nor written; where tiles ran, levels match the full build."""
    path = tmp_path / "s.zarr"
    write_slide(path, np.full((3, 1024, 1024), 240, np.uint8), np.zeros((1024, 1024), np.uint8), 1.0, chunk=128, levels=3)
    slide = open_slide(path)
    values = np.zeros(slide.yx_shape(1), np.uint32)
    values[20:100, 30:90] = 101
    sparse, full = create_layer(slide, "sparse", level=1), create_layer(slide, "full", level=1)
    for layer in (sparse, full):
        layer.write(0, (slice(0, 512), slice(0, 512)), values)
    sparse.mark_ran((slice(0, 128), slice(0, 128)))  # one tile's core over the region
    build_pyramid(sparse)
    build_pyramid(full)
    for level in (0, 2):
        np.testing.assert_array_equal(sparse.array(level)[:], full.array(level)[:])
    level0 = path / "labels" / "sparse" / "s0"
    written = [p for p in level0.rglob("*") if p.is_file() and not p.name.startswith(".")]
    assert 0 < len(written) <= 4  # the 2 x 2 level-0 chunks under one level-1 chunk, of 64


@pytest.mark.parametrize("shape, chunk, level", [((1000, 1300), 96, 1), ((777, 1025), 64, 0), ((777, 1025), 64, 2)])
def test_pyramid_blocks_found_from_ran_chunks_equal_a_full_scan(tmp_path, shape, chunk, level):
    """The blocks visited from the ran chunks are exactly those a scan of every chunk would keep."""
    path = tmp_path / "s.zarr"
    write_slide(path, np.full((3, *shape), 240, np.uint8), np.zeros(shape, np.uint8), 1.0, chunk=chunk, levels=4)
    layer = create_layer(open_slide(path), "pred", level=level)
    rng = np.random.default_rng(3)
    h, w = layer.slide.yx_shape(level)
    for _ in range(4):
        y, x = int(rng.integers(0, h - 40)), int(rng.integers(0, w - 40))
        layer.mark_ran((slice(y, y + 40), slice(x, x + 40)))
    src = layer.array(level)
    for i in range(len(layer.slide.levels)):
        dst = layer.array(i)
        scanned = [b for b in _blocks(dst) if layer.ran_in(_source_ends(b[-2:], src.shape[-2:], dst.shape[-2:]))]
        found = [b for b in _ran_blocks(layer, dst) if layer.ran_in(_source_ends(b[-2:], src.shape[-2:], dst.shape[-2:]))]
        assert sorted(map(str, found)) == sorted(map(str, scanned)) and scanned


def test_pyramid_tasks_merge_neighbouring_chunks_of_a_row():
    s = [slice(i * 4, i * 4 + 4) for i in range(40)]
    blocks = [(s[0], s[0]), (s[0], s[1]), (s[0], s[3]), (s[1], s[3]), (s[1], s[4])] + [(s[2], x) for x in s[:RUN_CHUNKS + 2]]
    assert list(_row_runs(blocks)) == [(s[0], slice(0, 8)), (s[0], s[3]), (s[1], slice(12, 20)),
                                       (s[2], slice(0, 4 * RUN_CHUNKS)), (s[2], slice(4 * RUN_CHUNKS, 4 * RUN_CHUNKS + 8))]


def test_source_ends_are_the_first_and_last_source_pixels():
    """The pyramid decides which chunks a block reads from the ends alone: they must be exactly
    _source_index's, up or down, on sizes that are not halves."""
    rng = np.random.default_rng(3)
    for _ in range(2000):
        src, dst = (int(n) for n in rng.integers(1, 5000, 2))
        start = int(rng.integers(0, dst))
        block = (slice(start, int(rng.integers(start + 1, dst + 1))),)
        index = _source_index(block, (src,), (dst,))[0]
        assert _source_ends(block, (src,), (dst,)) == [(index[0], index[-1])]
