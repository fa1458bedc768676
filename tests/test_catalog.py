"""catalog.py and the model it ships: found by name and by default, listed with its card, and able
to segment, with no model named, real sections it never saw as brightfield RGB slides and as one-channel
fluorescence slides alike (GLTa test sections), and `sebre segment` without --model."""

import functools
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from sebre_ij.catalog import SHIPPED, find_model, list_models
from sebre_ij.checkpoint import read_card, save_checkpoint
from sebre_ij.cli import app
from sebre_ij.cluster import ClusterOptions
from sebre_ij.datasets import shared_sections
from sebre_ij.demo import DemoSlide, demo_slide
from sebre_ij.errors import UserError
from sebre_ij.evaluate import compare_layers
from sebre_ij.labels import open_labels, read_plane
from sebre_ij.model import random_model
from sebre_ij.readers import read_image, read_labels
from sebre_ij.segment import SegmentOptions, segment
from sebre_ij.slide import open_slide
from sebre_ij.stores import write_slide

REGIONS = ("cortex", "hippocampus", "striatum_pallidum", "thalamus", "hypothalamus", "midbrain")
GLTA = Path(os.environ.get("SEBRE_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) / "glta"
# Two sections the demo does not show, as far apart as its own.
SECTIONS = DemoSlide(positions=(0.36, 0.58), seed=7)


def test_the_shipped_model_is_one_small_file_whose_card_reads_any_stain():
    assert SHIPPED.stat().st_size <= 20_000_000
    card = read_card(SHIPPED)
    assert card.input == "luminance" and len(card.channels) == 1
    assert set(REGIONS) <= set(card.classes)
    assert "Allen" in card.training["atlas"]["version"] and 0 < card.training["atlas"]["fraction"] < 1
    assert card.atlas_prior == 1.0


def test_no_name_means_the_shipped_model_and_a_path_means_itself(tmp_path):
    assert find_model(None) == SHIPPED == find_model("mouse")
    path = tmp_path / "mine.safetensors"
    path.write_bytes(b"")
    assert find_model(str(path)) == path
    with pytest.raises(UserError, match="sebre models"):
        find_model("rat")


def test_models_lists_the_shipped_one_then_the_cache_with_unreadable_files_named(tmp_path, monkeypatch):
    monkeypatch.setenv("SEBRE_CACHE", str(tmp_path))
    card = read_card(SHIPPED)
    save_checkpoint(tmp_path / "mine.safetensors", random_model(card), card)
    (tmp_path / "broken.safetensors").write_bytes(b"not a checkpoint")
    found = list_models()
    assert [(f.path.name, f.shipped) for f in found] == [
        ("mouse.safetensors", True),
        ("broken.safetensors", False),
        ("mine.safetensors", False),
    ]
    assert found[1].card is None and found[1].problem and found[2].card.classes == card.classes
    shown = CliRunner().invoke(app, ["models"], env={"COLUMNS": "250", "SEBRE_CACHE": str(tmp_path)})
    assert shown.exit_code == 0, shown.output
    assert "mouse (shipped)" in shown.output and "mine" in shown.output and str(tmp_path) in shown.output
    shipped_row = next(line for line in shown.output.splitlines() if "mouse (shipped)" in line)
    assert "atlas prior" in shown.output and "│ 1 " in shipped_row


def glta_slide(entry, out) -> str:
    """A GLTa section as a user's single-section crop (its own 12.5 µm pixels, smaller than one 320 px
    tile of the model's 50 µm/px), with its labels as labels/truth."""
    image = read_image(entry.image).pixels
    image = (image * 255).round().astype(np.uint8) if image.dtype != np.uint8 else image
    write_slide(out, image, read_labels(entry.labels, 13), entry.pixel_size_um)
    return str(out)


def one_channel_fluorescence(rgb: str, out) -> str:
    """The RGB slide as one fluorescence channel: its grey level inverted, bright tissue on dark glass."""
    slide = open_slide(rgb)
    grey = np.asarray(slide.plane(0)).mean(axis=0)
    truth = read_plane(open_labels(slide, "truth"), slide, 0)
    write_slide(out, (255 - grey).round().astype(np.uint8)[None], truth, slide.pixel_size(0))
    return str(out)


@pytest.fixture(scope="module")
def glta_test_sections(tmp_path_factory):
    """Two of the GLTa test sections (examples/train_real_sections.py: never trained on, never used
    to pick a checkpoint), each as a brightfield RGB slide and as a one-channel fluorescence slide."""
    if not (GLTA / "sections.json").is_file():
        reason = f"shared data not found at {GLTA} (set SEBRE_DATA to the folder holding glta/)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; required when CI is set")
        pytest.skip(reason)
    folder = tmp_path_factory.mktemp("glta")
    entries = {s.image.stem: s for s in shared_sections(GLTA).sections}
    slides = {}
    for name in ("glta_s079", "glta_s124"):
        rgb = glta_slide(entries[name], folder / f"{name}.zarr")
        slides[name] = {"brightfield": rgb, "fluorescence": one_channel_fluorescence(rgb, folder / f"{name}-f.zarr")}
    return slides


@functools.cache
def region_dice(path: str, atlas_prior: bool = True) -> float:
    """Mean Dice of the six regions where each covers at least 5 % of the section's tissue in truth
    (a sliver's Dice says little), as the shipped model finds them with no model named (once per
    slide and settings: the layer is named by them)."""
    name = "sebre" if atlas_prior else "no_prior"
    result = segment(path, None, SegmentOptions(labels=name, atlas_prior=atlas_prior))
    slide = open_slide(path)
    truth = read_plane(open_labels(slide, "truth"), slide, 0)
    classes = read_card(SHIPPED).classes
    share = np.bincount(truth.ravel(), minlength=len(classes)) / np.count_nonzero(truth)
    dice = compare_layers(slide, name, "truth", classes, result.level)
    return float(np.mean([dice[r] for r in REGIONS if share[classes.index(r)] >= 0.05]))


def test_the_shipped_model_finds_the_regions_of_brightfield_and_fluorescence_sections_alike(glta_test_sections):
    for name, slides in glta_test_sections.items():
        assert len(open_slide(slides["brightfield"]).channels) == 3
        assert len(open_slide(slides["fluorescence"]).channels) == 1
        dice = {kind: region_dice(path) for kind, path in slides.items()}
        assert dice["brightfield"] >= 0.5, (name, dice)
        assert abs(dice["fluorescence"] - dice["brightfield"]) <= 0.05, (name, dice)


def test_the_atlas_prior_mends_the_shipped_models_regions_on_real_sections(glta_test_sections):
    assert read_card(SHIPPED).atlas_prior > 0
    gains = {}
    for name, slides in glta_test_sections.items():
        gains[name] = region_dice(slides["brightfield"]) - region_dice(slides["brightfield"], atlas_prior=False)
    assert min(gains.values()) > 0 and np.mean(list(gains.values())) > 0.02, gains


def test_the_atlas_prior_runs_on_dask_workers_as_in_process(glta_test_sections, tmp_path):
    """The prior travels with each task (TileJob.prior) and fits the same plane on a worker."""
    store = Path(shutil.copytree(glta_test_sections["glta_s079"]["brightfield"], tmp_path / "s.zarr"))
    options = SegmentOptions(labels="here", progress=False)
    segment(store, None, options)
    segment(store, None, replace(options, labels="workers"), cluster=ClusterOptions(workers=1))
    slide = open_slide(store)
    here, workers = (read_plane(open_labels(slide, name), slide, 0) for name in ("here", "workers"))
    assert np.array_equal(here, workers)
    alone = segment(store, None, SegmentOptions(labels="alone", atlas_prior=False, progress=False))
    assert not np.array_equal(
        read_plane(open_labels(slide, "alone"), slide, alone.level),
        read_plane(open_labels(slide, "here"), slide, alone.level),
    )


@pytest.fixture(scope="module")
def demo_rgb(tmp_path_factory):
    return str(demo_slide(tmp_path_factory.mktemp("demo") / "rgb.zarr", SECTIONS))


def test_segment_without_a_model_uses_the_shipped_one(demo_rgb, tmp_path):
    done = CliRunner().invoke(app, ["segment", demo_rgb, "--labels", "cli", "--rois", str(tmp_path / "r.zip")])
    assert done.exit_code == 0, done.output
    named = CliRunner().invoke(app, ["segment", demo_rgb, "--labels", "named", "--model", str(SHIPPED)])
    assert named.exit_code == 0, named.output
    slide = open_slide(demo_rgb)
    layer = open_labels(slide, "cli")
    assert layer.group.attrs["sebre"]["model"] == str(SHIPPED)
    assert np.array_equal(read_plane(layer, slide, 0), read_plane(open_labels(slide, "named"), slide, 0))
    assert {"cortex", "striatum_pallidum", "thalamus"} <= {p["name"] for p in layer.properties.values()}
    assert (tmp_path / "r.zip").stat().st_size > 0
