"""napari as users meet it: a segmented store opened with napari-ome-zarr's reader into a real
`napari.Viewer`, under Xvfb, its labels layer checked and a screenshot saved for a person to look at."""

import json
import os
import subprocess
import sys

import pytest

from sebre_ij.checkpoint import save_checkpoint
from sebre_ij.model import ModelCard, random_model
from sebre_ij.segment import SegmentOptions, segment
from sebre_ij.slide import open_slide
from sebre_ij.stores import make_slide_store
from sebre_ij.synth import CLASSES

VIEW = r"""
import json, sys, time
import napari
from napari_ome_zarr import napari_get_reader
from qtpy.QtWidgets import QApplication

store, shot = sys.argv[1], sys.argv[2]
viewer = napari.Viewer(show=False)
for data, kwargs, kind in napari_get_reader(store)():
    getattr(viewer, f"add_{kind}")(data, **kwargs)
found = []
for layer in viewer.layers:
    levels = len(layer.data) if layer.multiscale else 1
    entry = {"name": layer.name, "kind": type(layer).__name__.lower(), "levels": levels}
    if entry["kind"] == "labels":
        layer.visible = True
        entry["features"] = {k: [v if isinstance(v, (int, float, str)) else str(v) for v in layer.features[k]]
                             for k in layer.features.columns}
        entry["colors"] = {str(v): [round(float(c), 3) for c in layer.get_color(v)] for v in layer.features["index"]}
    found.append(entry)
viewer.reset_view()
for _ in range(40):  # let the multiscale levels load and draw, as they would in front of a user
    QApplication.processEvents()
    time.sleep(0.05)
viewer.screenshot(shot, canvas_only=False)
print(json.dumps(found))
"""


@pytest.fixture(scope="module")
def segmented(tmp_path_factory):
    """A 2-section slide segmented into labels/sebre by a random-weight model that finds regions."""
    work = tmp_path_factory.mktemp("napari")
    store = work / "slide.zarr"
    make_slide_store(store, sections=2, size=(1024, 1536), pixel_size=8.0, seed=5)
    names = [n for n, _ in CLASSES]
    card = ModelCard("tiny_fpn", names, [c for _, c in CLASSES], 16.0, list("RGB"), [0.8] * 3, [0.2] * 3, 64, 16)
    save_checkpoint(work / "m.safetensors", random_model(card, 1), card)
    result = segment(store, work / "m.safetensors", SegmentOptions(min_score=0.0, progress=False))
    return work, store, result


def test_napari_shows_every_level_with_the_region_colours_and_features(segmented, xvfb_run):
    work, store, result = segmented
    shot = work / "napari.png"
    done = subprocess.run(
        [xvfb_run, "-a", sys.executable, "-c", VIEW, str(store), str(shot)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NAPARI_CONFIG": str(work / "napari.yaml")},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    layers = json.loads(done.stdout.strip().splitlines()[-1])
    labels = {layer["name"].split("/")[-1]: layer for layer in layers if layer["kind"] == "labels"}
    assert set(labels) >= {"sebre", "truth"}
    ours = labels["sebre"]
    assert ours["levels"] == len(open_slide(store).levels)
    rows = {r["label-value"]: r for r in result.regions}
    features = ours["features"]
    assert sorted(features["index"]) == sorted(rows)
    for i, value in enumerate(features["index"]):
        row = rows[value]
        assert (features["name"][i], features["class"][i], features["section"][i]) == (
            row["name"],
            row["class"],
            row["section"],
        )
        assert features["score"][i] == pytest.approx(row["score"])
        colour = [c / 255 for c in CLASSES[row["class"]][1]] + [1.0]
        assert ours["colors"][str(value)] == pytest.approx(colour, abs=0.01)
    assert shot.stat().st_size > 10_000  # the picture a user sees, saved beside the store
