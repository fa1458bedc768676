"""The atlas prior (atlas_prior.py): a section's plane found from class probabilities that err by
patches, the patches mended, and no prior where the fit cannot be trusted."""

import math

import numpy as np
import pytest
from scipy import ndimage as ndi

from sebre_ij.atlas_prior import AtlasPrior, Plane, cut, read_volume, section_points, whole_section
from sebre_ij.model import ModelCard
from sebre_ij.synth import CLASSES

NAMES = [name for name, _ in CLASSES]
PX_MM = 0.05  # the shipped model's 50 µm/px
TILE = 320
PLANE = Plane(lr=5.7, ap=6.2, dv=3.6, pitch=0.06, yaw=-0.04, angle=math.radians(25), sx=1.05, sy=0.95)


def tile_points(centre=(TILE / 2, TILE / 2)) -> np.ndarray:
    ys, xs = np.mgrid[0:TILE, 0:TILE]
    return section_points(ys.ravel(), xs.ravel(), np.asarray(centre), PX_MM)


def section_cut(plane: Plane = PLANE, centre=(TILE / 2, TILE / 2)) -> np.ndarray:
    """The atlas's classes on a tile whose `centre` pixel lies at the plane's centre."""
    return cut(read_volume(), plane, tile_points(centre=centre)).reshape(TILE, TILE)


def erring(truth: np.ndarray, seed: int = 0, patches: int = 12) -> np.ndarray:
    """Class probabilities of a model that is right at 0.6 but for `patches` blobs 15-25 px across
    where another brain class wins, and soft at every boundary."""
    rng = np.random.default_rng(seed)
    labels = truth.copy()
    ys, xs = np.nonzero(truth > 0)
    yy, xx = np.mgrid[0:TILE, 0:TILE]
    for i in rng.choice(len(ys), patches, replace=False):
        blob = (yy - ys[i]) ** 2 + (xx - xs[i]) ** 2 < rng.uniform(8, 12) ** 2
        labels[blob & (truth > 0)] = rng.choice([1, 2, 4, 5, 6, 7])
    p = np.full((len(NAMES), TILE, TILE), 0.4 / (len(NAMES) - 1), np.float32)
    np.put_along_axis(p, labels[None].astype(np.int64), 0.6, axis=0)
    p = ndi.gaussian_filter(p, (0, 1.0, 1.0))
    return p / p.sum(axis=0)


def brain_share(labels: np.ndarray, truth: np.ndarray) -> float:
    brain = truth > 0
    return float(np.mean(labels[brain] == truth[brain]))


def located_cut(p: np.ndarray) -> tuple[Plane, np.ndarray]:
    """The plane the prior finds for `p`, and the tile cut there. The section's centre is the
    tissue's, not the tile's: tests compare the cuts, and the angles."""
    found, _, centre = AtlasPrior.for_model(NAMES, 50.0, 1.0).locate(p)
    return found, cut(read_volume(), found, tile_points(centre=centre)).reshape(TILE, TILE)


def test_a_plane_cut_holds_the_regions_of_a_coronal_section_in_the_tile():
    truth = section_cut()
    present = {NAMES[k] for k in np.unique(truth)}
    assert {"cortex", "hippocampus", "thalamus", "striatum_pallidum"} <= present
    assert whole_section(np.stack([(truth == 0).astype(np.float32)] * 2)) is not None


def test_the_prior_mends_the_patches_of_a_model_that_errs():
    truth = section_cut()
    p = erring(truth)
    before = brain_share(p.argmax(0), truth)
    prior = AtlasPrior.for_model(NAMES, 50.0, 1.0)
    mended = prior.apply(p)
    after = brain_share(mended.argmax(0), truth)
    assert before < 0.9 and after > 0.95 and after > before + 0.05, (before, after)
    assert np.array_equal(prior.apply(p), mended)  # the same fit every run: resumed runs match


def test_the_fit_finds_the_plane_whatever_the_angle_in_the_tile():
    for angle in (90.0, 200.0):
        plane = PLANE._replace(angle=math.radians(angle))
        truth = section_cut(plane)
        found, refit = located_cut(erring(truth, seed=1))
        assert brain_share(refit, truth) > 0.92, angle
        assert found.half == 0  # a whole section is not taken for a hemisection
        turn = (found.angle - plane.angle + math.pi) % (2 * math.pi) - math.pi
        assert abs(turn) < math.radians(4), (angle, math.degrees(found.angle))


def test_a_cut_tilted_ten_degrees_is_found():
    """Real cuts tilt by a few degrees; the fit may not pull them back to coronal."""
    plane = PLANE._replace(pitch=math.radians(10), yaw=0.0)
    truth = section_cut(plane)
    found, refit = located_cut(erring(truth, seed=2))
    assert brain_share(refit, truth) > 0.9
    assert abs(found.pitch - plane.pitch) < math.radians(4), math.degrees(found.pitch)


@pytest.mark.parametrize("half", [1, -1])
def test_a_hemisection_is_fitted_as_that_half_of_the_plane_and_mended(half):
    truth = section_cut(PLANE._replace(half=half))
    assert np.any(truth > 0) and np.count_nonzero(truth) < 0.6 * np.count_nonzero(section_cut())
    p = erring(truth, seed=5)
    found, refit = located_cut(p)
    assert found.half == half
    assert brain_share(refit, truth) > 0.9
    mended = AtlasPrior.for_model(NAMES, 50.0, 1.0).apply(p)
    assert brain_share(mended.argmax(0), truth) > brain_share(p.argmax(0), truth) + 0.05


def test_no_prior_for_a_section_the_tile_edge_cuts():
    truth = section_cut(centre=(TILE / 2, 40))  # the left hemisphere past the tile's left edge
    p = erring(truth)
    assert whole_section(p) is None
    assert AtlasPrior.for_model(NAMES, 50.0, 1.0).apply(p) is p


def test_probabilities_that_no_plane_explains_are_left_as_they_are():
    """A brain-shaped section whose classes lie in random smooth patches (another species, a model
    of other regions): the best cut agrees with them on too little of it."""
    rng = np.random.default_rng(3)
    brain = section_cut() > 0
    field = ndi.gaussian_filter(rng.normal(size=(8, TILE, TILE)), (0, 12, 12)).argmax(0)
    labels = np.where(brain, np.array([1, 2, 4, 5, 6, 7, 8, 9])[field], 0)
    p = np.full((len(NAMES), TILE, TILE), 0.1 / (len(NAMES) - 1), np.float32)
    np.put_along_axis(p, labels[None], 0.9, axis=0)
    assert AtlasPrior.for_model(NAMES, 50.0, 1.0).apply(p) is p


def test_the_prior_needs_a_weight_and_the_atlas_classes():
    assert AtlasPrior.for_model(NAMES, 50.0, 0.0) is None
    assert AtlasPrior.for_model(["background", "cortex", "hippocampus"], 50.0, 1.0) is None
    shuffled = [NAMES[0], *reversed(NAMES[1:])]
    prior = AtlasPrior.for_model(shuffled, 50.0, 1.0)
    assert [shuffled[k] for k in prior.classes] == list(read_volume().names)


def card(**changes) -> ModelCard:
    fields = dict(
        architecture="tiny_fpn",
        classes=NAMES,
        colors=[c for _, c in CLASSES],
        pixel_size_um=50.0,
        channels=["luminance"],
        mean=[0.5],
        std=[0.25],
        semantic=True,
        input="luminance",
    )
    return ModelCard(**{**fields, **changes})


def test_the_card_carries_the_prior_weight_and_leaves_it_out_when_none():
    assert "atlas_prior" not in card().to_json()
    assert ModelCard.from_json(card(atlas_prior=1.5).to_json()).atlas_prior == 1.5
    for bad in (-1.0, True, "1"):
        with pytest.raises(Exception, match="atlas_prior"):
            ModelCard.from_json(card(atlas_prior=bad).to_json())
