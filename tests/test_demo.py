"""`sebre demo`, the README's first command, end to end: a slide drawn from the atlas the package
carries, segmented by the shipped model, every output written and the Dice printed."""

import subprocess

import numpy as np
import zarr
from conftest import SEBRE

from sebre_ij.atlas_prior import read_volume
from sebre_ij.demo import DemoSlide, coronal, demo_slide
from sebre_ij.labels import open_labels, read_plane
from sebre_ij.slide import open_slide


def test_the_demo_slide_holds_its_sections_with_their_atlas_classes(tmp_path):
    spec = DemoSlide(positions=(0.3, 0.64))
    slide = open_slide(demo_slide(tmp_path / "demo.zarr", spec))
    truth = read_plane(open_labels(slide, "truth"), slide, 0)
    names = {p["class"]: p["name"] for p in open_labels(slide, "truth").properties.values()}
    assert {"cortex", "hippocampus", "midbrain", "striatum_pallidum", "olfactory"} <= set(names.values())
    image = np.asarray(slide.plane(0)).mean(axis=0)
    assert image[truth > 0].mean() < image[truth == 0].mean() - 40  # stained tissue on bright glass
    assert slide.pixel_size(0) == spec.pixel_size


def test_coronal_planes_are_dorsal_side_up_and_cut_across_both_hemispheres():
    plane = coronal(read_volume().classes, 0.5, 50.0)
    rows = np.flatnonzero((plane == 1).any(axis=1))
    assert rows[0] < 0.1 * plane.shape[0]  # the cortex reaches the top: dorsal side up
    brain = plane > 0
    assert (brain == brain[:, ::-1]).mean() > 0.95  # the atlas's two halves, mirror images


def test_demo_writes_every_output_with_the_shipped_model(tmp_path):
    out = tmp_path / "demo"
    done = subprocess.run([*SEBRE, "demo", "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "mean Dice" in done.stdout and "shipped" not in done.stderr
    for name in ("RoiSet.zip", "regions.geojson", "measurements.csv", "preview.png"):
        assert (out / name).stat().st_size > 0, name
    labels = zarr.open_group(str(out / "demo.zarr" / "labels"), mode="r")
    assert "sebre" in labels.attrs["labels"]
