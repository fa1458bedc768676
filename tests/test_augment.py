"""Augmentation: geometry that is exact where it can be checked by hand, labels that keep their
classes, glass past the edge, photometry that stays in range, and draws that repeat with a seed."""

import numpy as np
import pytest

from sebre_ij.augment import Augmentation, affine_matrix, photometric, random_geometry, stain_jitter, tint, warp

FILL = np.array([0.9, 0.8, 0.7], np.float32)
NO_PHOTOMETRY = dict(brightness=0, contrast=1, gamma=1, colour=0, stain=0, grey=0, tint=0, invert=0)


def section(h=12, w=20, seed=0):
    rng = np.random.default_rng(seed)
    classes = rng.integers(0, 4, (h, w)).astype(np.uint8)
    classes[classes == 2] = 7  # values need not be consecutive
    return rng.random((3, h, w)).astype(np.float32), classes


def centre(a):
    return ((a.shape[-2] - 1) / 2, (a.shape[-1] - 1) / 2)


def test_identity_and_quarter_turns_are_exact():
    image, classes = section()
    same = warp(image, classes, affine_matrix(0), centre(classes), classes.shape, FILL)
    np.testing.assert_array_equal(same[1], classes)
    np.testing.assert_allclose(same[0], image, atol=1e-6)
    for angle, k in ((90, 1), (180, 2), (270, 3), (-90, 3)):
        turned = np.rot90(classes, k)
        out_image, out_classes = warp(image, classes, affine_matrix(angle), centre(classes), turned.shape, FILL)
        np.testing.assert_array_equal(out_classes, turned)
        np.testing.assert_allclose(out_image, np.rot90(image, k, axes=(1, 2)), atol=1e-6)


def test_mirror_is_a_left_right_flip():
    image, classes = section()
    out_image, out_classes = warp(image, classes, affine_matrix(flip=True), centre(classes), classes.shape, FILL)
    np.testing.assert_array_equal(out_classes, classes[:, ::-1])
    np.testing.assert_allclose(out_image, image[:, :, ::-1], atol=1e-6)


def test_scale_two_samples_every_other_pixel():
    image, classes = section(13, 13)
    out_image, out_classes = warp(image, classes, affine_matrix(scale=(2.0, 2.0)), (6.0, 6.0), (7, 7), FILL)
    np.testing.assert_array_equal(out_classes, classes[::2, ::2])
    np.testing.assert_allclose(out_image, image[:, ::2, ::2], atol=1e-6)


def test_any_angle_keeps_class_values_and_fills_past_the_edge_with_glass():
    image, classes = section()
    out_image, out_classes = warp(image, classes, affine_matrix(37.0), centre(classes), (40, 40), FILL)
    assert set(np.unique(out_classes)) <= set(np.unique(classes))
    corner = (slice(0, 3), slice(0, 3))  # far outside a 12 x 20 section rotated in a 40 x 40 canvas
    assert (out_classes[corner] == 0).all()
    np.testing.assert_allclose(out_image[(slice(None), *corner)], np.broadcast_to(FILL[:, None, None], (3, 3, 3)))
    # the centre pixel of the canvas is the section's centre: rotation leaves it in place
    assert out_classes[20, 20] in np.unique(classes[5:7, 9:11])


def test_elastic_warp_moves_pixels_by_about_its_amplitude_and_repeats_with_a_seed():
    aug = Augmentation(rotate=False, flip=0, scale=1.0, stretch=0, shear=0, elastic=1.0, elastic_px=0.05)
    matrix, field = random_geometry(aug, 64, np.random.default_rng(3))
    np.testing.assert_allclose(matrix, np.eye(2))
    assert field.shape == (2, 64, 64)
    assert 0.5 < np.abs(field).max() < 5 * 0.05 * 64
    again = random_geometry(aug, 64, np.random.default_rng(3))[1]
    np.testing.assert_array_equal(field, again)
    assert not np.array_equal(field, random_geometry(aug, 64, np.random.default_rng(4))[1])


def test_random_geometry_draws_rotations_flips_and_zooms_within_range():
    aug = Augmentation(stretch=0, shear=0, elastic=0)
    rng = np.random.default_rng(0)
    mats = [random_geometry(aug, 32, rng)[0] for _ in range(300)]
    zooms = [np.sqrt(abs(np.linalg.det(m))) for m in mats]
    assert 1 / 1.25 - 1e-9 <= min(zooms) and max(zooms) <= 1.25 + 1e-9
    assert 0.35 < np.mean([np.linalg.det(m) < 0 for m in mats]) < 0.65  # mirrored about half the time
    angles = np.degrees([np.arctan2(m[0, 1], m[0, 0]) for m in mats if np.linalg.det(m) > 0]) % 360
    assert np.histogram(angles, bins=4, range=(0, 360))[0].min() > 15  # every quadrant of angles


def test_photometry_off_is_identity_and_inversion_inverts():
    image, _ = section()
    rng = np.random.default_rng(0)
    np.testing.assert_allclose(photometric(image, Augmentation(**NO_PHOTOMETRY), rng), image, atol=1e-6)
    inverted = photometric(image, Augmentation(**{**NO_PHOTOMETRY, "invert": 1.0}), rng)
    np.testing.assert_allclose(inverted, 1 - image, atol=1e-6)


def test_photometry_stays_in_range_and_repeats_with_a_seed():
    image, _ = section()
    aug = Augmentation(grey=0.3, tint=0.3, invert=0.3)
    outs = [photometric(image, aug, np.random.default_rng(s)) for s in range(20)]
    assert all(o.dtype == np.float32 and o.shape == image.shape and 0 <= o.min() and o.max() <= 1 for o in outs)
    np.testing.assert_array_equal(photometric(image, aug, np.random.default_rng(5)), outs[5])
    assert any(np.allclose(o[0], o[1]) and np.allclose(o[1], o[2]) for o in outs)  # some went grey
    grey = photometric(image[:1], aug, np.random.default_rng(1))  # one channel: no colour steps
    assert grey.shape == (1, 12, 20)


def test_greyscale_becomes_all_channels_alike():
    image, _ = section()
    out = photometric(image, Augmentation(**{**NO_PHOTOMETRY, "grey": 1.0}), np.random.default_rng(0))
    np.testing.assert_allclose(out, np.repeat(image.mean(axis=0, keepdims=True), 3, axis=0), atol=1e-6)


def test_stain_jitter_round_trips_at_zero_strength_and_changes_colour_otherwise():
    image, _ = section()
    image = 0.2 + 0.7 * image  # inside the range where optical density is defined
    np.testing.assert_allclose(stain_jitter(image, 0.0, np.random.default_rng(0)), image, atol=2e-3)
    changed = stain_jitter(image, 0.3, np.random.default_rng(0))
    assert np.abs(changed - image).mean() > 0.005


def test_tint_keeps_glass_white_and_darker_grey_darker():
    grey = np.linspace(0.1, 1.0, 10)[None].repeat(2, axis=0)  # a 2 x 10 grey image, darkest left
    rgb = tint(grey, np.random.default_rng(0))
    assert rgb.shape == (3, 2, 10)
    np.testing.assert_allclose(rgb[:, :, -1], 1.0)
    assert (np.diff(rgb, axis=-1) >= 0).all()


@pytest.mark.parametrize("angle", [0, 45, 90, 200])
def test_rotation_about_a_point_keeps_that_point(angle):
    classes = np.zeros((31, 31), np.uint8)
    classes[15, 15] = 5
    image = np.zeros((1, 31, 31), np.float32)
    _, out = warp(image, classes, affine_matrix(angle), (15.0, 15.0), (31, 31), FILL[:1])
    assert out[15, 15] == 5 and (out == 5).sum() == 1
