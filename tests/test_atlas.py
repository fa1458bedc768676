"""Sections cut from the Allen CCFv3 atlas: exact planes, honest labels, damage and looks.

The atlas is read from $SEBRE_ATLAS, else `<repo>/../shared/data/ccfv3`; without it the tests skip,
or fail when $CI is set (a runner must have the data)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import required
from PIL import Image

from sebre_ij.atlas import MIDLINE_X, ORIENTATIONS, Plane, SectionRecipe, atlas_section, cut, load_atlas, random_plane
from sebre_ij.atlas_preview import main as preview_main
from sebre_ij.errors import UserError
from sebre_ij.render import Look

ROOT = Path(__file__).resolve().parents[1]
ATLAS = Path(os.environ.get("SEBRE_ATLAS") or ROOT.parent / "shared" / "data" / "ccfv3")
GLTA = ATLAS.parent / "glta"
SEEDS = range(12)


def require(folder: Path) -> Path:
    """`folder`, or a skip (a failure under CI) saying where the data was looked for."""
    return required(folder, "set SEBRE_ATLAS to the CCFv3 folder (with ../glta beside it)")


@pytest.fixture(scope="module")
def atlas():
    return load_atlas(require(ATLAS))


@pytest.fixture(scope="module")
def glta():
    folder = require(GLTA)
    return folder, json.loads((folder / "sections.json").read_text())


def test_classes_follow_the_glta_table(atlas, glta):
    _, table = glta
    assert atlas.class_names == tuple(c["name"] for c in sorted(table["classes"], key=lambda c: c["index"]))
    assert atlas.classes.dtype == np.uint8 and atlas.classes.max() == len(atlas.class_names) - 1


@pytest.mark.parametrize("stem", ["glta_s004", "glta_s104", "glta_s189"])
def test_anchored_cut_equals_the_label_image(atlas, glta, stem):
    folder, _ = glta
    entry = json.loads((ATLAS / "glta_anchoring.json").read_text())[stem]
    plane = Plane.from_anchoring(entry["anchoring"], entry["width"], entry["height"])
    labels = np.asarray(Image.open(folder / "labels" / f"{stem}.png"))
    assert np.array_equal(cut(atlas.classes, plane.points()), labels)


def test_window_points_equal_the_whole_grid(atlas):
    plane, _ = random_plane(atlas, SectionRecipe(), np.random.default_rng(0))
    assert np.array_equal(plane.points((5, 7, 20, 30)), plane.points()[:, 5:25, 7:37])


@pytest.mark.parametrize("seed", SEEDS)
def test_classes_are_the_plane_less_what_damage_removed(atlas, seed):
    recipe = SectionRecipe(hemisection=0.3, missing=0.5, tear=0.5, fold=0.3, bubble=0.3, debris=0.3)
    image, classes, section = atlas_section(atlas, recipe, np.random.default_rng(seed))
    plane_classes = cut(atlas.classes, section.points())
    assert classes.dtype == np.uint8 and classes.shape == image.shape[1:] == section.removed.shape
    assert np.array_equal(classes, np.where(section.removed, 0, plane_classes))
    assert set(np.unique(classes)) <= set(np.unique(plane_classes))
    assert np.array_equal(atlas.tree.classes[section.structures], plane_classes)
    assert not (section.tissue & (classes == 0)).any()


@pytest.mark.parametrize("seed", SEEDS)
def test_images_have_their_modality_and_a_glass_margin(atlas, seed):
    recipe = SectionRecipe()
    image, classes, _ = atlas_section(atlas, recipe, np.random.default_rng(seed))
    assert image.dtype == np.float32 and image.shape[0] in (1, 3) and 0 <= image.min() and image.max() <= 1
    m = recipe.margin_px
    assert not classes[:m].any() and not classes[-m:].any() and not classes[:, :m].any() and not classes[:, -m:].any()


def test_hemisections_keep_one_side(atlas):
    recipe = SectionRecipe(orientations={"coronal": 1.0}, hemisection=1.0, missing=0.0)
    for seed in range(6):
        _, classes, section = atlas_section(atlas, recipe, np.random.default_rng(seed))
        x = section.points()[0]
        kept, gone = x[classes > 0], x[section.removed]
        assert gone.size and kept.size
        left = kept.mean() < MIDLINE_X
        assert (kept.max() < gone.min()) if left else (kept.min() > gone.max())
        assert abs((kept.max() if left else kept.min()) - MIDLINE_X) < 12


def test_brightfield_is_dark_on_bright_and_fluorescence_the_reverse(atlas):
    for fluorescence in (0.0, 1.0):
        recipe = SectionRecipe(look=Look(fluorescence=fluorescence), bubble=0.0, debris=0.0)
        for seed in range(5):
            image, classes, section = atlas_section(atlas, recipe, np.random.default_rng(seed))
            assert image.shape[0] == (1 if fluorescence else 3)
            glass, tissue = image.mean(0)[classes == 0].mean(), image.mean(0)[section.tissue].mean()
            assert (glass < tissue) if fluorescence else (glass > tissue + 0.05), (seed, glass, tissue)


def test_a_seed_gives_the_same_bytes(atlas):
    recipe = SectionRecipe(pixel_size_um=40.0)
    a = atlas_section(atlas, recipe, np.random.default_rng(5))
    b = atlas_section(atlas, recipe, np.random.default_rng(5))
    c = atlas_section(atlas, recipe, np.random.default_rng(6))
    assert a[0].tobytes() == b[0].tobytes() and a[1].tobytes() == b[1].tobytes()
    assert a[0].tobytes() != c[0].tobytes()


def test_planes_tilt_within_the_recipe(atlas):
    recipe = SectionRecipe(tilt_deg=3.0)
    rng = np.random.default_rng(1)
    for _ in range(50):
        plane, orientation = random_plane(atlas, recipe, rng)
        normal = np.cross(plane.u, plane.v)
        axis = ORIENTATIONS[orientation][2]
        tilt = np.degrees(np.arccos(abs(normal[axis]) / np.linalg.norm(normal)))
        assert tilt <= 2.5 * recipe.tilt_deg * np.sqrt(2) + 1e-6


def test_coronal_sections_are_mouse_sized(atlas):
    recipe = SectionRecipe(pixel_size_um=50.0, orientations={"coronal": 1.0}, hemisection=0.0, missing=0.0)
    widths = [atlas_section(atlas, recipe, np.random.default_rng(s))[1].shape[1] for s in range(8)]
    assert max(widths) >= 150 and max(widths) <= 350, widths


def test_recipe_round_trips_through_json():
    recipe = SectionRecipe(pixel_size_um=32.0, look=Look(fluorescence=0.5))
    again = SectionRecipe.from_dict(json.loads(json.dumps(recipe.to_dict())))
    assert again == recipe


def test_a_folder_without_the_atlas_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="classes_25um.tif"):
        load_atlas(tmp_path)


def test_preview_writes_real_and_generated(atlas, glta, tmp_path, monkeypatch):
    monkeypatch.setattr("sebre_ij.atlas_preview.load_atlas", lambda path: atlas)
    out = tmp_path / "preview.png"
    preview_main([str(out), "--atlas", str(ATLAS), "--real", str(glta[0]), "--n", "4", "--pixel-size", "50"])
    assert Image.open(out).size[0] > 400
