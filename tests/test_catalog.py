"""catalog.py and the model it ships: found by name and by default, listed with its card, and able
to segment, with no model named, a brightfield RGB slide and a one-channel fluorescence slide it
never saw (sections cut from the small atlas copy the package carries, demo.py)."""

import numpy as np
import pytest
from typer.testing import CliRunner

from sebre_ij.catalog import SHIPPED, find_model, list_models
from sebre_ij.checkpoint import read_card, save_checkpoint
from sebre_ij.cli import app
from sebre_ij.demo import DemoSlide, demo_slide
from sebre_ij.errors import UserError
from sebre_ij.evaluate import compare_layers
from sebre_ij.labels import open_labels, read_plane
from sebre_ij.model import random_model
from sebre_ij.segment import SegmentOptions, segment
from sebre_ij.slide import open_slide
from sebre_ij.stores import write_slide

REGIONS = ("cortex", "hippocampus", "striatum_pallidum", "thalamus", "midbrain")
# Two sections the demo does not show, as far apart as its own.
SECTIONS = DemoSlide(positions=(0.36, 0.58), seed=7)


def test_the_shipped_model_is_one_small_file_whose_card_reads_any_stain():
    assert SHIPPED.stat().st_size <= 20_000_000
    card = read_card(SHIPPED)
    assert card.input == "luminance" and len(card.channels) == 1
    assert set(REGIONS) <= set(card.classes)
    assert "Allen" in card.training["atlas"]["version"] and 0 < card.training["atlas"]["fraction"] < 1


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


def one_channel_fluorescence(rgb: str, out) -> str:
    """The RGB slide as one fluorescence channel: its grey level inverted, bright tissue on dark glass."""
    slide = open_slide(rgb)
    grey = np.asarray(slide.plane(0)).mean(axis=0)
    truth = read_plane(open_labels(slide, "truth"), slide, 0)
    write_slide(out, (255 - grey).round().astype(np.uint8)[None], truth, slide.pixel_size(0))
    return str(out)


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    folder = tmp_path_factory.mktemp("slides")
    rgb = str(demo_slide(folder / "rgb.zarr", SECTIONS))
    return {"brightfield": rgb, "fluorescence": one_channel_fluorescence(rgb, folder / "fluo.zarr")}


@pytest.mark.parametrize("kind", ["brightfield", "fluorescence"])
def test_the_shipped_model_finds_the_regions_of_either_kind_of_slide(slides, kind):
    slide = open_slide(slides[kind])
    assert len(slide.channels) == (3 if kind == "brightfield" else 1)
    result = segment(slides[kind], find_model(None), SegmentOptions(labels="sebre"))
    dice = compare_layers(open_slide(slides[kind]), "sebre", "truth", read_card(SHIPPED).classes, result.level)
    assert np.mean([dice[r] for r in REGIONS]) >= 0.6, dice


def test_segment_without_a_model_uses_the_shipped_one(slides, tmp_path):
    done = CliRunner().invoke(
        app, ["segment", slides["brightfield"], "--labels", "cli", "--rois", str(tmp_path / "r.zip")]
    )
    assert done.exit_code == 0, done.output
    names = {p["name"] for p in open_labels(open_slide(slides["brightfield"]), "cli").properties.values()}
    assert set(REGIONS) <= names
    assert (tmp_path / "r.zip").stat().st_size > 0
