"""exports.py: a finished label layer to the files users open, only those asked for, in the
coordinates asked for; a level that does not exist and a missing display are refused in one line."""

import csv
import json

import numpy as np
import pytest

from sebre_ij.errors import UserError
from sebre_ij.exports import Exports, export_regions, layer_regions, push_regions, roi_level
from sebre_ij.labels import open_labels
from sebre_ij.rois import read_roiset
from sebre_ij.slide import open_slide
from sebre_ij.stores import make_slide_store


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    """A 2-section synthetic slide (8 µm/px, 3 levels) whose truth layer is the finished layer to export."""
    path = tmp_path_factory.mktemp("exports") / "slide.zarr"
    make_slide_store(path, sections=2, size=(1024, 1536), pixel_size=8.0, seed=5)
    return open_slide(path)


def test_only_the_exports_asked_for_are_written(slide, tmp_path):
    written = export_regions(slide, "truth", Exports(rois=tmp_path / "r.zip", measurements=tmp_path / "m.csv"))
    assert written == {"rois": str(tmp_path / "r.zip"), "measurements": str(tmp_path / "m.csv")}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.csv", "r.zip"]
    rois = read_roiset(tmp_path / "r.zip")
    with open(tmp_path / "m.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rois) == len(rows) > 4 and {r.name for r in rois} == {row["name"] for row in rows}


def test_rois_at_a_coarser_level_are_the_level_0_outlines_scaled(slide, tmp_path):
    info = open_labels(slide, "truth")
    level = roi_level(slide, info)
    full = {r.name: r for r in layer_regions(slide, info, level)}
    coarse = {r.name: r for r in layer_regions(slide, info, level, frame=2)}
    (hf, wf), (h0, w0) = slide.yx_shape(2), slide.yx_shape(0)
    for name, region in coarse.items():
        ring, ring0 = region.polygons[0][0], full[name].polygons[0][0]
        np.testing.assert_allclose(ring, ring0 * [wf / w0, hf / h0], atol=1e-9)
        assert region.extra["coordinate_level"] == 2 and region.extra["um_per_px"] == pytest.approx(slide.pixel_size(2))


def test_geojson_is_in_level_0_pixels_with_areas_in_square_microns(slide, tmp_path):
    export_regions(slide, "truth", Exports(geojson=tmp_path / "g.geojson", roi_level=1))
    features = json.loads((tmp_path / "g.geojson").read_text())["features"]
    info = open_labels(slide, "truth")
    level0 = {r.name: r for r in layer_regions(slide, info, roi_level(slide, info))}
    for feature in features:
        ring = np.asarray(
            feature["geometry"]["coordinates"][0]
            if feature["geometry"]["type"] == "Polygon"
            else feature["geometry"]["coordinates"][0][0]
        )
        assert ring.max() > 0.5 * min(slide.yx_shape(0))  # level-0 pixels, not level 1's
        assert feature["properties"]["name"] in level0


def test_a_level_that_does_not_exist_is_refused_before_anything_is_written(slide, tmp_path):
    with pytest.raises(UserError, match=r"roi_level=7 does not exist; the slide has levels 0 to 2"):
        export_regions(slide, "truth", Exports(rois=tmp_path / "r.zip", roi_level=7))
    assert not list(tmp_path.iterdir())


def test_pushing_to_imagej_without_a_display_says_how(slide, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    with pytest.raises(UserError, match=r"no display for the ImageJ ROI Manager .*xvfb-run -a.*rois=RoiSet.zip"):
        push_regions(slide, "truth")


def test_rois_at_the_inference_level_follow_the_class_margins_the_layer_keeps(tmp_path):
    """A layer written with the model's class margins keeps them once finished, and its ROIs, traced
    at the inference level, run where those margins balance: on the straight line the class
    probabilities cross, in level-0 pixels, not along the inference pixels' staircase."""
    from sebre_ij.layer import MARGIN, create_layer, finish_layer
    from sebre_ij.pyramid import build_pyramid
    from sebre_ij.stitch import quantized
    from sebre_ij.stores import write_slide

    path, shape = tmp_path / "s.zarr", (256, 256)
    write_slide(path, np.full((3, *shape), 240, np.uint8), np.zeros(shape, np.uint8), 1.0, chunk=64, levels=3)
    slide = open_slide(path)  # level 2 (64 px) is the inference level, 4 level-0 px per pixel
    a, b = np.cos(0.4), np.sin(0.4)
    c = a * 32 + b * 32 + 0.3
    y, x = np.mgrid[:64, :64]
    d = a * x + b * y - c
    layer = create_layer(slide, "smooth", 2)
    layer.write(0, (slice(0, 64), slice(0, 64)), np.where(d > 0, 101, 102).astype(np.uint32))
    layer.write(0, (slice(0, 64), slice(0, 64)), quantized(np.clip(np.abs(0.2 * d), 0, 1)), MARGIN)
    build_pyramid(layer)
    rows = [{"label-value": v, "name": n, "class": k, "section": 1} for v, n, k in ((101, "a", 1), (102, "b", 2))]
    finish_layer(layer, rows, [{"label-value": r["label-value"], "rgba": [255, 0, 0, 255]} for r in rows])
    layer.drop_scratch()
    info = open_labels(slide, "smooth")
    assert MARGIN in info.group
    ring = next(r for r in layer_regions(slide, info, 2, tolerance=0) if r.value == 101).polygons[0][0]
    u, v = ring[:, 0] / 4 - 0.5, ring[:, 1] / 4 - 0.5  # level-0 corners to inference pixel centres
    inner = (u > 1) & (u < 62) & (v > 1) & (v < 62)
    off = np.abs(a * u[inner] + b * v[inner] - c)
    assert inner.sum() > 40 and off.max() < 0.01
