"""The label layer being written: names, refusal to overwrite, reopening, and finishing it."""

import numpy as np
import pytest
from ome_zarr_models.v04.image_label import ImageLabel as ImageLabelV04
from ome_zarr_models.v05.image_label import ImageLabel as ImageLabelV05

from sebre_ij.errors import UserError
from sebre_ij.labels import open_labels, read_plane
from sebre_ij.layer import check_name, create_layer, finish_layer, reopen_layer
from sebre_ij.pyramid import build_pyramid
from sebre_ij.slide import open_slide
from sebre_ij.stores import write_slide


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
    props = [
        {"label-value": 101, "name": "cortex", "class": 1, "section": 1},
        {"label-value": 205, "name": "thalamus", "class": 5, "section": 2},
    ]
    colors = [{"label-value": 101, "rgba": [230, 90, 60, 255]}, {"label-value": 205, "rgba": [0, 120, 60, 255]}]
    finish_layer(layer, props, colors)

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


def test_a_reopened_layer_writes_where_the_created_one_does(tmp_path):
    """A cluster worker reopens the layer the client created: same arrays, same chunks, no progress of its own."""
    path = tmp_path / "s.zarr"
    write_slide(path, np.full((3, 256, 384), 240, np.uint8), np.zeros((256, 384), np.uint8), 1.0, chunk=64, levels=2)
    created = create_layer(open_slide(path), "pred", level=1, run_key="k")
    worker = reopen_layer(open_slide(path), "pred", level=1)
    assert worker.chunks == created.chunks == (64, 64) and worker.progress == {}
    worker.write(0, worker.chunk_window((1, 2)), np.full((64, 64), 7, np.uint32))
    window = created.chunk_window((1, 2))
    assert window == (slice(64, 128), slice(128, 192))
    assert (created.read(0, window) == 7).all() and created.read(0, (slice(0, 64), slice(0, 192))).max() == 0
    resumed = create_layer(open_slide(path), "pred", level=1, run_key="k")  # the same run key reopens it as it is
    assert (resumed.read(0, window) == 7).all() and resumed.progress["key"] == "k"
