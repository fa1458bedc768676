"""Slides with z planes (czyx, tczyx) and NGFF 0.5: segment writes per-plane labels, ROIs carry the plane."""

import numpy as np
import pytest
import torch
import zarr
from ome_zarr.format import FormatV04, FormatV05
from ome_zarr.io import parse_url
from ome_zarr.writer import write_image

from sebre_ij.checkpoint import save_checkpoint
from sebre_ij.exports import Exports, export_regions
from sebre_ij.labels import open_labels, read_plane
from sebre_ij.layer import create_layer, finish_layer
from sebre_ij.model import ModelCard, build_model
from sebre_ij.pyramid import build_pyramid
from sebre_ij.rois import read_roiset
from sebre_ij.segment import SegmentOptions, segment
from sebre_ij.slide import open_slide
from sebre_ij.synth import CLASSES, synth_slide


def write_stack(path, axes: str, ngff: str) -> np.ndarray:
    """Two section planes as z, written by ome-zarr-py with the given axes."""
    planes = [synth_slide(1, (512, 640), 16.0, seed)[0] for seed in (1, 2)]
    data = np.stack(planes, axis=1)  # c, z, y, x
    if axes == "tczyx":
        data = data[None]
    fmt = FormatV05() if ngff == "0.5" else FormatV04()
    store = parse_url(str(path), mode="w", fmt=fmt).store
    root = zarr.open_group(store, mode="w", zarr_format=fmt.zarr_format)
    scale = {"z": 1.0, "y": 16.0, "x": 16.0}
    write_image(
        data,
        root,
        axes=axes,
        fmt=fmt,
        scale_factors=(2,),
        scale=scale,
        axes_units={a: "micrometer" for a in "zyx"},
        storage_options={"chunks": (1,) * (len(axes) - 2) + (128, 128)},
    )
    return data


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    names = [n for n, _ in CLASSES]
    card = ModelCard(
        "tiny_fpn", names, [c for _, c in CLASSES], 16.0, ["C0", "C1", "C2"], [0.8] * 3, [0.2] * 3, 128, 32
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "random.safetensors"
    save_checkpoint(path, build_model(card), card)
    return path


@pytest.mark.parametrize("axes, ngff", [("czyx", "0.4"), ("tczyx", "0.5")])
def test_segment_runs_every_plane(tmp_path, model, axes, ngff):
    path = tmp_path / "stack.zarr"
    write_stack(path, axes, ngff)
    result = segment(path, model, SegmentOptions(min_score=0.0, progress=False))
    slide = open_slide(path)
    assert slide.n_planes == 2 and result.level == 0 and result.tiles > 0
    info = open_labels(slide, "sebre")
    arr = info.group[info.paths[0]]
    assert arr.shape == tuple(s for a, s in zip(slide.axes, slide.levels[0].shape) if a != "c")
    assert info.group[info.paths[1]].shape[-2:] == slide.yx_shape(1)


def test_rois_carry_their_plane(tmp_path):
    path = tmp_path / "stack.zarr"
    write_stack(path, "czyx", "0.4")
    slide = open_slide(path)
    layer = create_layer(slide, "hand", level=0)
    for z, value in enumerate((101, 205)):
        plane = np.zeros(slide.yx_shape(0), np.uint32)
        plane[50 + 40 * z : 150, 60:200] = value
        layer.write(z, (slice(None), slice(None)), plane)
    build_pyramid(layer)
    finish_layer(
        layer,
        [
            {"label-value": 101, "name": "cortex", "class": 1, "section": 1},
            {"label-value": 205, "name": "thalamus", "class": 5, "section": 2},
        ],
        [{"label-value": 101, "rgba": [230, 90, 60, 255]}, {"label-value": 205, "rgba": [0, 120, 60, 255]}],
    )
    slide = open_slide(path)
    np.testing.assert_array_equal(np.unique(read_plane(open_labels(slide, "hand"), slide, 0, z=1)), [0, 205])
    export_regions(slide, "hand", Exports(rois=tmp_path / "r.zip"))
    rois = {r.name: r for r in read_roiset(tmp_path / "r.zip")}
    assert rois["s1-cortex"].position == 1 and rois["s2-thalamus"].position == 2
    assert rois["s2-thalamus"].top == 90
