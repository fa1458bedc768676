"""The whole path through the real `sebre` command: synth -> train -> segment -> exports.

Checks what a user relies on: the store validates as OME-Zarr, the image is untouched byte for byte,
and real ImageJ reads the RoiSet.zip with the expected names and coordinates.
"""

import csv
import hashlib
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import SEBRE, copy_slide
from ome_zarr_models.v04.image import Image
from ome_zarr_models.v04.image_label import ImageLabel

from sebre_ij.checkpoint import read_card
from sebre_ij.exports import layer_regions, roi_level
from sebre_ij.labels import open_labels
from sebre_ij.rois import read_roiset
from sebre_ij.slide import open_slide


def sebre(*args, check=True):
    proc = subprocess.run([*SEBRE, *map(str, args)], capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"sebre {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def image_checksums(store: Path) -> dict[str, str]:
    """Every file of the store outside labels/: the image and its metadata."""
    return {
        str(p.relative_to(store)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(store.rglob("*"))
        if p.is_file() and p.relative_to(store).parts[0] != "labels"
    }


@pytest.fixture(scope="module")
def run(trained_slide, tmp_path_factory):
    """`sebre synth` and `sebre train` ran in conftest's trained_slide; segment a copy here."""
    work = tmp_path_factory.mktemp("e2e")
    slide, model = copy_slide(trained_slide[0], work), trained_slide[1]
    before = image_checksums(slide)
    out = sebre(
        "segment",
        slide,
        "--model",
        model,
        "--rois",
        work / "RoiSet.zip",
        "--geojson",
        work / "regions.geojson",
        "--measurements",
        work / "measurements.csv",
        "--preview",
        work / "preview.png",
        "--min-score",
        0.05,
    )
    return work, slide, model, before, out


def test_segment_writes_a_valid_label_layer_and_leaves_the_image_alone(run):
    work, slide, model, before, out = run
    assert image_checksums(slide) == before
    root = zarr.open_group(slide, mode="r")
    Image.from_zarr(root)
    ImageLabel.from_zarr(root["labels"]["sebre"])
    s = open_slide(slide)
    assert s.label_names() == ["truth", "sebre"]
    info = open_labels(s, "sebre")
    for level in range(len(s.levels)):
        assert info.group[info.paths[level]].shape == s.yx_shape(level)
    assert info.properties, "the model found no region at all"
    for value, p in info.properties.items():
        assert value == p["section"] * 100 + p["class"] and p["section"] in (1, 2)
        assert info.colors[value] == tuple(read_card(model).colors[p["class"]])
    assert "labels/sebre from level" in out.stdout


def test_roiset_decodes_in_imagej_with_names_and_coordinates(run, imagej):
    from sebre_ij.imagej import decode_roiset_with_imagej

    work, slide, *_ = run
    s = open_slide(slide)
    info = open_labels(s, "sebre")
    level = roi_level(s, info)
    expected = layer_regions(s, info, level)  # the layer's regions as exported (sub-pixel where margins are kept)
    decoded = decode_roiset_with_imagej(work / "RoiSet.zip")
    assert [d["name"] for d in decoded] == [r.name for r in expected]
    for d, r in zip(decoded, expected):
        assert re.fullmatch(r"s\d+-[a-z_]+", d["name"])
        outline = np.concatenate([ring for part in r.polygons for ring in (part[0], *part[1])])
        x0, y0 = outline.min(axis=0)
        x1, y1 = outline.max(axis=0)
        bx, by, bw, bh = d["bounds"]
        assert abs(bx - x0) < 1 and abs(by - y0) < 1 and abs(bx + bw - x1) < 1 and abs(by + bh - y1) < 1
        assert d["group"] == r.class_index  # ImageJ recolours by group; the card's colour is in the file
    for roi, r in zip(read_roiset(work / "RoiSet.zip"), expected):
        assert tuple(roi.stroke_color[1:]) == r.color


def test_other_exports_are_written(run):
    work, *_ = run
    geo = json.loads((work / "regions.geojson").read_text())
    assert geo["type"] == "FeatureCollection" and geo["features"]
    rows = list(csv.DictReader((work / "measurements.csv").open()))
    assert rows and float(rows[0]["area_um2"]) > 0
    assert (work / "preview.png").stat().st_size > 1000


def test_rois_command_matches_segment_export(run, tmp_path):
    work, slide, *_ = run
    sebre("rois", slide, "--labels", "sebre", "--out", tmp_path / "again.zip")
    assert (tmp_path / "again.zip").read_bytes() == (work / "RoiSet.zip").read_bytes()


def test_existing_layer_is_refused_without_overwrite(run):
    work, slide, model, before, _ = run
    labels_before = image_checksums(slide / "labels" / "sebre")
    proc = sebre("segment", slide, "--model", model, check=False)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "--overwrite" in proc.stderr and "Traceback" not in proc.stderr
    assert image_checksums(slide / "labels" / "sebre") == labels_before


@pytest.mark.parametrize(
    "args, words",
    [
        (["info", "nowhere.zarr"], "no such file"),
        (["segment", "nowhere.zarr", "--model", "m.safetensors"], "no such file"),
    ],
)
def test_user_errors_are_one_line_exit_2(args, words, tmp_path):
    proc = subprocess.run([*SEBRE, *args], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and words in proc.stderr and "Traceback" not in proc.stderr


def test_blank_slide_is_refused_and_nothing_written(run, tmp_path):
    from sebre_ij.stores import write_slide

    _, _, model, _, _ = run
    blank = tmp_path / "blank.zarr"
    write_slide(blank, np.full((3, 600, 800), 240, np.uint8), np.zeros((600, 800), np.uint8), 8.0)
    before = image_checksums(blank) | image_checksums(blank / "labels")
    proc = sebre("segment", blank, "--model", model, check=False)
    assert proc.returncode == 2 and "no tissue found" in proc.stderr
    assert open_slide(blank).label_names() == ["truth"] and not (blank / "labels" / "sebre").exists()
    assert image_checksums(blank) | image_checksums(blank / "labels") == before


def test_rois_at_a_chosen_level_carry_their_scale(run, tmp_path):
    work, slide, *_ = run
    sebre("rois", slide, "--labels", "sebre", "--out", tmp_path / "l2.zip", "--roi-level", 2)
    sebre("rois", slide, "--labels", "sebre", "--out", tmp_path / "exact.zip", "--roi-tolerance", 0)
    full, level2, exact = (read_roiset(p) for p in (work / "RoiSet.zip", tmp_path / "l2.zip", tmp_path / "exact.zip"))
    assert [r.name for r in level2] == [r.name for r in full]
    factor = open_slide(slide).yx_shape(0)[0] / open_slide(slide).yx_shape(2)[0]
    for a, b in zip(full, level2):
        np.testing.assert_allclose(b.coordinates(), a.coordinates() / factor, atol=1e-3)
        assert "coordinate_level: 2" in b.props and f"um_per_px: {8.0 * factor}" in b.props
        assert re.search(r"area_um2: \d", a.props)
    assert sum(len(r.coordinates()) for r in exact) > sum(len(r.coordinates()) for r in full)
    bad = sebre("rois", slide, "--labels", "sebre", "--out", tmp_path / "x.zip", "--roi-level", 9, check=False)
    assert bad.returncode == 2 and "--roi-level 9" in bad.stderr and not (tmp_path / "x.zip").exists()
