"""train.py: class-balanced tiles, whole-image prediction as segment makes it, the per-pixel loss's
class weights, the best validation checkpoint with its curves, and fixed seeds; tiles cut from the
atlas, mixed with real ones, in one luminance channel.

The atlas tests read the atlas from $SEBRE_ATLAS, else `<repo>/../shared/data/ccfv3`; without it
they skip, or fail when $CI is set (a runner must have the data)."""

import csv
import json
import os
import subprocess
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import SEBRE, write_synth_set
from PIL import Image
from safetensors.torch import load_file

import sebre_ij.train as train_module
from sebre_ij.atlas import SectionRecipe, atlas_section
from sebre_ij.augment import Augmentation
from sebre_ij.checkpoint import read_card
from sebre_ij.curves import curve_paths
from sebre_ij.datasets import Example, TrainingData
from sebre_ij.infer import predict_image
from sebre_ij.model import ModelCard
from sebre_ij.render import Look
from sebre_ij.sampling import AtlasTiles, AtlasView, TileSampler, hemisection, shared_atlas
from sebre_ij.set_stats import semantic_weights
from sebre_ij.tissue import find_sections
from sebre_ij.train import TrainOptions, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ATLAS = os.environ.get("SEBRE_ATLAS") or os.path.join(ROOT, "..", "shared", "data", "ccfv3")


TINY = dict(arch="tiny_fpn", pixel_size=64.0, tile_size=64, overlap=16, batch_size=1, progress=False)


def test_sampler_balances_classes_across_sections():
    big = np.ones((40, 40), np.uint8)
    rare = big.copy()
    rare[:3, :3] = 2  # 9 pixels of class 2 in one section of two; 3191 of class 1
    examples = [Example(np.zeros((1, 40, 40), np.float32), c, f"s{i}") for i, c in enumerate((big, rare))]
    sampler = TileSampler(examples, 16, np.zeros(1, np.float32), Augmentation())
    rng = np.random.default_rng(0)
    picks = [sampler.centre(rng) for _ in range(600)]
    drawn = np.array([examples[e].classes[y, x] for e, y, x, _ in picks])
    assert 0.42 < (drawn == 2).mean() < 0.58
    assert all(e == 1 for e, _, _, _ in np.array(picks)[drawn == 2])
    image, classes = sampler.tile(rng)
    assert image.shape == (1, 16, 16) and classes.shape == (16, 16)
    assert set(np.unique(classes)) <= {0, 1, 2}


def test_sections_that_fit_a_tile_are_shown_whole_or_cut_at_any_angle():
    classes = np.zeros((60, 90), np.uint8)
    classes[10:50, 20:80] = 1
    classes[25:35, 40:60] = 2  # a region inside the section, with a frame of class 1 around it
    image = np.where(classes > 0, 0.3, 0.9).astype(np.float32)[None]
    sampler = TileSampler([Example(image, classes, "s0")], 96, np.full(1, 0.9, np.float32), Augmentation())
    rng = np.random.default_rng(1)
    whole = 0
    for _ in range(40):
        _, tile = sampler.tile(rng)
        border = np.concatenate([tile[0], tile[-1], tile[:, 0], tile[:, -1]])
        whole += not border.any()  # nothing cut off by the tile's edge
        assert tile.any()  # cut or whole, the tile shows the section
    assert 10 < whole < 35  # about half whole (CUT_SECTIONS), the rest cut at random offsets
    big = TileSampler([Example(image, classes, "s0")], 48, np.full(1, 0.9, np.float32), Augmentation())
    assert not any(big.whole)  # too large for the tile: class-balanced pieces instead


def test_hemisection_tiles_show_one_half_of_the_section_with_its_labels():
    classes = np.zeros((60, 90), np.uint8)
    classes[10:50, 20:80] = 1
    classes[25:35, 30:40] = 2  # left of the middle column (50)
    classes[25:35, 60:70] = 3  # right of it
    image = np.where(classes > 0, 0.3, 0.9).astype(np.float32)[None]
    glass = np.full(1, 0.9, np.float32)
    rng = np.random.default_rng(2)
    kept = set()
    for _ in range(20):
        half_image, half = hemisection(image, classes, glass, rng)
        assert np.array_equal(half_image[0] < 0.5, half > 0)  # the tissue goes with its labels
        cut = np.flatnonzero(half.any(axis=0))
        assert 25 <= len(cut) <= 35  # about half the section's 60 columns
        kept.add(tuple(sorted(set(np.unique(half)) - {0, 1})))
    assert kept == {(2,), (3,)}  # either half
    assert image[0, 30, 35] == 0.3 and classes[30, 35] == 2  # the section itself is left as it was
    sampler = TileSampler([Example(image, classes, "s0")], 96, glass, Augmentation(), hemisections=1.0)
    for _ in range(10):
        _, tile = sampler.tile(rng)
        assert not ({2, 3} <= set(np.unique(tile)))


class EverywhereClassOne(torch.nn.Module):
    """A stand-in detector: one instance of class 1 covering each whole tile, score 1."""

    def forward(self, images):
        return [
            {
                "masks": torch.ones((1, 1, *im.shape[-2:])),
                "scores": torch.ones(1),
                "labels": torch.ones(1, dtype=torch.int64),
                "boxes": torch.tensor([[0.0, 0.0, im.shape[-1] - 1.0, im.shape[-2] - 1.0]]),
            }  # x0, y0, x1, y1, as torchvision's
            for im in images
        ]


def test_predict_image_covers_the_image_with_tile_cores_and_keeps_to_the_sections():
    image = np.full((3, 150, 230), 0.9, np.float32)
    image[:, 30:120, 40:200] = 0.3  # one dark section on bright glass, larger than a tile
    card = ModelCard(
        "tiny_fpn",
        ["background", "cortex"],
        [(0, 0, 0), (1, 2, 3)],
        16.0,
        ["R", "G", "B"],
        [0.5] * 3,
        [0.2] * 3,
        tile_size=64,
        overlap=16,
    )
    out = predict_image(EverywhereClassOne(), card, image, device=torch.device("cpu"))
    np.testing.assert_array_equal(out, (find_sections(image) > 0).astype(np.uint8))
    assert out[30:120, 40:200].all() and not out[:20].any()


def test_best_validation_checkpoint_and_curves(tmp_path, monkeypatch):
    root = write_synth_set(tmp_path / "set")
    scores, states = iter([0.2, 0.5, 0.3]), []

    def scripted_validate(model, card, sections, device):
        assert [s.name for s in sections] == ["s2"]
        states.append({k: v.clone() for k, v in model.state_dict().items()})
        return next(scores)

    monkeypatch.setattr(train_module, "validate", scripted_validate)
    out = tmp_path / "m.safetensors"
    card = train(TrainingData((str(root),)), out, TrainOptions(steps=3, val_every=1, val_sections=("s2",), **TINY))
    assert card.training["best_step"] == 2 and card.training["val_dice"] == 0.5
    assert card.training["val_curve"] == [[1, 0.2], [2, 0.5], [3, 0.3]]
    assert card.training["train_sections"] == ["s0", "s1"] and card.training["augmentation"]["rotate"] is True
    saved = load_file(str(out))
    assert all(torch.equal(saved[k], v) for k, v in states[1].items())  # the step-2 weights, not the last
    assert not all(torch.equal(saved[k], v) for k, v in states[2].items())
    assert read_card(out).training["best_step"] == 2
    csv_path, png_path = curve_paths(out)
    rows = list(csv.DictReader(open(csv_path)))
    assert [r["step"] for r in rows] == ["1", "2", "3"] and [r["val_dice"] for r in rows] == ["0.2", "0.5", "0.3"]
    assert all(float(r["loss"]) > 0 and float(r["lr"]) > 0 for r in rows)
    with Image.open(png_path) as im:
        assert im.format == "PNG" and im.size[0] > 300


def test_moving_average_is_what_is_validated_and_kept(tmp_path, monkeypatch):
    root = write_synth_set(tmp_path / "set")
    raw, scored = [], []
    real_step = train_module.train_step

    def recording_step(model, *args):
        loss = real_step(model, *args)
        raw.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return loss

    def recording_validate(model, card, sections, device):
        scored.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return 0.1 * len(scored)  # each better than the last: the final average is kept

    monkeypatch.setattr(train_module, "train_step", recording_step)
    monkeypatch.setattr(train_module, "validate", recording_validate)
    out = tmp_path / "m.safetensors"
    options = TrainOptions(steps=3, val_every=1, val_sections=("s2",), ema=0.25, **TINY)
    card = train(TrainingData((str(root),)), out, options)
    assert card.training["ema"] == 0.25
    moving = raw[0]  # torch's average starts at the first step's weights
    for step in range(3):
        if step:
            moving = {k: 0.25 * moving[k] + 0.75 * raw[step][k] for k in moving}
        assert all(torch.allclose(scored[step][k], moving[k], atol=1e-6) for k in moving)
    saved = load_file(str(out))
    assert all(torch.allclose(saved[k], moving[k], atol=1e-6) for k in saved)
    assert not all(torch.allclose(saved[k], raw[-1][k], atol=1e-6) for k in saved)
    raw.clear()  # without validation sections, the last average is written
    train(TrainingData((str(root),)), out, replace(options, val_sections=()))
    moving = raw[0]
    for step in range(1, 3):
        moving = {k: 0.25 * moving[k] + 0.75 * raw[step][k] for k in moving}
    saved = load_file(str(out))
    assert all(torch.allclose(saved[k], moving[k], atol=1e-6) for k in saved)


def test_same_seed_same_weights_and_test_sections_stay_out(tmp_path):
    root = write_synth_set(tmp_path / "set")
    options = TrainOptions(steps=2, seed=7, test_sections=("s1",), **TINY)
    runs = [train(TrainingData((str(root),)), tmp_path / f"m{i}.safetensors", options) for i in range(2)]
    a, b = (load_file(str(tmp_path / f"m{i}.safetensors")) for i in range(2))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert runs[0].training["test_sections"] == ["s1"] and runs[0].training["train_sections"] == ["s0", "s2"]
    other = train(
        TrainingData((str(root),)),
        tmp_path / "m2.safetensors",
        TrainOptions(steps=2, seed=8, test_sections=("s1",), **TINY),
    )
    assert other.training["seed"] == 8
    assert not all(torch.equal(a[k], v) for k, v in load_file(str(tmp_path / "m2.safetensors")).items())


def test_tile_workers_repeat_with_a_seed(tmp_path):
    root = write_synth_set(tmp_path / "set")
    for name in ("a", "b"):
        train(
            TrainingData((str(root),)),
            tmp_path / f"{name}.safetensors",
            TrainOptions(steps=2, seed=3, workers=2, **TINY),
        )
    a, b = (load_file(str(tmp_path / f"{name}.safetensors")) for name in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert read_card(tmp_path / "a.safetensors").training["workers"] == 2


def test_semantic_weights_are_inverse_square_roots_of_pixel_shares():
    classes = np.zeros((10, 10), np.uint8)
    classes[:, :1] = 1  # 10 % class 1, 90 % background, class 2 absent
    weights = semantic_weights([Example(np.zeros((1, 10, 10), np.float32), classes, "s")], 3)
    raw = np.array([1 / np.sqrt(0.9), 1 / np.sqrt(0.1)])
    np.testing.assert_allclose(weights[:2].numpy(), raw / raw.mean(), rtol=1e-6)
    assert weights[2] == 0


def test_mixed_weights_count_each_source_by_its_share_of_tiles():
    one, other = np.zeros((10, 10), np.uint8), np.zeros((20, 20), np.uint8)
    one[:, :5] = 1  # half class 1
    other[:, :2] = 2  # a tenth class 2, and four times the pixels: shares count, not pixels
    sources = [
        (0.5, [Example(np.zeros((1, 10, 10), np.float32), one, "a")]),
        (0.5, [Example(np.zeros((1, 20, 20), np.float32), other, "b")]),
    ]
    shares = np.array([0.5 * 0.5 + 0.5 * 0.9, 0.25, 0.05])
    raw = 1 / np.sqrt(shares)
    np.testing.assert_allclose(train_module.mixed_weights(sources, 3).numpy(), raw / raw.mean(), rtol=1e-6)


@pytest.fixture(scope="module")
def atlas_dir():
    """The CCFv3 folder; a skip without it, a failure under CI."""
    if not os.path.isfile(os.path.join(ATLAS, "classes_25um.tif")):
        reason = f"{ATLAS} not found: set SEBRE_ATLAS to the CCFv3 folder"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (required when CI is set)")
        pytest.skip(reason)
    return ATLAS


COARSE = SectionRecipe(pixel_size_um=200.0)  # sections of about 70 px: tiny tiles, fast steps
ATLAS_TINY = dict(TINY, pixel_size=200.0, atlas_recipe=COARSE)


def write_atlas_set(root, atlas_dir, n=3):
    """A shared-data set of `n` brightfield sections cut from the atlas (s0, s1 train, s2 validates): real sections
    in the atlas's classes, at 200 µm/px."""
    atlas = shared_atlas(atlas_dir)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    recipe = SectionRecipe(pixel_size_um=200.0, orientations={"coronal": 1.0}, look=Look(fluorescence=0.0))
    sections = []
    for i in range(n):
        image, labels, _ = atlas_section(atlas, recipe, rng)
        Image.fromarray((image.transpose(1, 2, 0) * 255).round().astype(np.uint8)).save(root / "images" / f"s{i}.png")
        Image.fromarray(labels).save(root / "labels" / f"s{i}.png")
        sections.append({"image": f"images/s{i}.png", "labels": f"labels/s{i}.png", "pixel_size_um": 200.0})
    classes = [{"index": i, "name": name, "rgb": [i * 19 % 256] * 3} for i, name in enumerate(atlas.class_names)]
    (root / "sections.json").write_text(json.dumps({"classes": classes, "sections": sections}))
    return root


@pytest.mark.parametrize("mode", ["luminance", "channels"])
def test_atlas_tiles_hold_their_sections_classes(atlas_dir, mode):
    steady = Augmentation(
        brightness=0.0, contrast=1.0, gamma=1.0, colour=0.0, stain=0.0, grey=0.0, tint=0.0, invert=0.0
    )
    tiles = AtlasTiles(atlas_dir, COARSE, 128, steady, AtlasView(mode, 3))
    whole = 0
    for seed in range(32):
        section, glass = tiles.section(np.random.default_rng(seed))
        image, classes = tiles.tile(np.random.default_rng(seed))  # the same section, then placed in a tile
        assert image.shape == ((1,) if mode == "luminance" else (3,)) + (128, 128) and classes.shape == (128, 128)
        assert classes.any() and set(np.unique(classes)) <= set(np.unique(section.classes))
        border = np.concatenate([classes[0], classes[-1], classes[:, 0], classes[:, -1]])
        if not border.any():  # shown whole: every class of the section, and glass in the corners
            whole += 1
            assert set(np.unique(classes)) == set(np.unique(section.classes))
            assert np.allclose(image[:, 0, 0], glass, atol=0.02)
        if mode == "luminance":
            # glass 1, as in model_input
            assert np.isclose(np.median(section.image[0][section.classes == 0]), 1.0, atol=0.1)
    assert 8 <= whole <= 28  # half placed whole, half anywhere (some of those whole too)


def test_luminance_model_on_atlas_and_real_sections_records_its_recipe(atlas_dir, tmp_path):
    root = write_atlas_set(tmp_path / "set", atlas_dir)
    options = TrainOptions(
        steps=2,
        seed=4,
        val_sections=("s2",),
        input="luminance",
        atlas=atlas_dir,
        atlas_fraction=0.5,
        hemisections=0.15,
        **ATLAS_TINY,
    )
    card = train(TrainingData((str(root),)), tmp_path / "m.safetensors", options)
    saved = read_card(tmp_path / "m.safetensors")
    assert saved.input == card.input == "luminance" and saved.channels == ["luminance"] and len(saved.mean) == 1
    assert saved.training["train_sections"] == ["s0", "s1"] and saved.training["val_sections"] == ["s2"]
    generated = saved.training["atlas"]
    assert generated["fraction"] == 0.5 and generated["version"].startswith("Allen CCFv3")
    assert SectionRecipe.from_dict(generated["recipe"]) == COARSE
    assert saved.training["augmentation"]["invert"] == 0 and saved.training["input"] == "luminance"
    assert saved.training["hemisections"] == 0.15


def test_atlas_runs_repeat_with_a_seed(atlas_dir, tmp_path):
    root = write_atlas_set(tmp_path / "set", atlas_dir)
    options = TrainOptions(steps=2, seed=5, input="luminance", atlas=atlas_dir, **ATLAS_TINY)
    for name, workers in (("a", 0), ("b", 0), ("c", 2), ("d", 2)):
        train(TrainingData((str(root),)), tmp_path / f"{name}.safetensors", replace(options, workers=workers))
    a, b, c, d = (load_file(str(tmp_path / f"{name}.safetensors")) for name in "abcd")
    assert all(torch.equal(a[k], b[k]) for k in a) and all(torch.equal(c[k], d[k]) for k in c)
    other = train(TrainingData((str(root),)), tmp_path / "e.safetensors", replace(options, seed=6))
    assert other.training["atlas"]["fraction"] == 0.7  # the default share with an atlas
    assert not all(torch.equal(a[k], v) for k, v in load_file(str(tmp_path / "e.safetensors")).items())


def test_atlas_alone_with_real_sections_only_validating(atlas_dir, tmp_path):
    root = write_atlas_set(tmp_path / "set", atlas_dir, n=2)
    options = TrainOptions(
        steps=2, val_every=2, input="luminance", atlas=atlas_dir, atlas_fraction=1.0, instance_loss=0.0, **ATLAS_TINY
    )
    card = train(TrainingData((str(root),)), tmp_path / "m.safetensors", options)
    assert card.training["train_sections"] == [] and card.training["val_sections"] == ["s0", "s1"]
    assert card.training["instance_loss"] == 0.0 and 0 <= card.training["val_dice"] <= 1
    named = train(TrainingData((str(root),)), tmp_path / "n.safetensors", replace(options, val_sections=("s0", "s1")))
    assert named.training["val_sections"] == ["s0", "s1"]


def test_an_atlas_share_without_an_atlas_names_the_flag(tmp_path, monkeypatch):
    root = write_synth_set(tmp_path / "set")
    monkeypatch.delenv("SEBRE_ATLAS", raising=False)
    done = subprocess.run(
        [
            *SEBRE,
            "train",
            str(root),
            "--out",
            str(tmp_path / "m.safetensors"),
            "--atlas-fraction",
            "0.5",
            "--pixel-size",
            "64",
            "--steps",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    assert done.returncode == 2 and "--atlas DIR" in done.stderr, done.stderr


@pytest.mark.parametrize(
    "flag, value, said",
    [("--ema", "1", ("ema=1.0", "below 1")), ("--hemisections", "1.5", ("hemisections=1.5", "0 to 1"))],
)
def test_a_share_or_decay_out_of_range_is_refused_with_its_range(tmp_path, flag, value, said):
    root = write_synth_set(tmp_path / "set")
    out = tmp_path / "m.safetensors"
    done = subprocess.run(
        [*SEBRE, "train", str(root), "--out", str(out), "--pixel-size", "64", "--steps", "1", flag, value],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    assert done.returncode == 2 and all(words in done.stderr for words in said), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not out.exists()
