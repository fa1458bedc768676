"""Training-time augmentation: what changes between slides, labs and scanners, drawn at random.

Geometry (rotation by any angle, mirror, scale, shear, elastic warp) is one mapping from tile pixels
to section pixels, so a tile is interpolated once, straight from the whole section: a rotated tile
shows real tissue in its corners, and only the area past the section's edge takes the glass colour.
Labels are sampled nearest-neighbour, so they keep exactly the class values they had.

Photometry works on images in [0, 1]: brightness, contrast, gamma, per-channel colour gain, stain
jitter in haematoxylin-eosin-DAB optical density (Tellez et al. 2018), greyscale, a grey section
tinted as another single stain, and inversion (dark-glass fluorescence vs bright-glass brightfield).
A one-channel luminance input (model_input.py) has no stain or polarity left to vary; what still
differs between scans is exposure, uneven illumination, focus and noise (`Augmentation.luminance`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.color import hed_from_rgb, rgb_from_hed

from .render import smooth_noise


@dataclass
class Augmentation:
    """Ranges and probabilities of each change; `asdict` of it goes into the model card."""

    rotate: bool = True  # any angle in [0, 360)
    flip: float = 0.5  # probability of a mirror image
    scale: float = 1.25  # zoom drawn log-uniformly in [1/scale, scale]
    stretch: float = 0.08  # anisotropy: y and x scales differ by up to this fraction
    shear: float = 0.08
    elastic: float = 0.5  # probability of a smooth elastic warp
    elastic_px: float = 0.02  # its displacement, as a fraction of the tile side
    brightness: float = 0.08
    contrast: float = 1.3  # factor drawn log-uniformly in [1/contrast, contrast]
    gamma: float = 1.4
    colour: float = 0.08  # per-channel gain in [1 - colour, 1 + colour]
    stain: float = 0.15  # HED optical densities scaled by [1 - stain, 1 + stain] each
    grey: float = 0.15  # probability an RGB tile becomes grey
    tint: float = 0.1  # probability an RGB tile becomes a grey section in a random single stain
    invert: float = 0.1  # probability of inversion
    bias: float = 0.0  # largest sd of a smooth log gain over the tile (uneven illumination)
    blur: float = 0.0  # probability of a Gaussian blur of sd up to 1 px (focus)
    noise: float = 0.0  # largest sd of added pixel noise

    def to_dict(self) -> dict:
        """The settings; bias, blur and noise left out while off, so a card reads as it did before they existed."""
        values = asdict(self)
        return {k: v for k, v in values.items() if k not in SCAN_OPS or v}

    @classmethod
    def luminance(cls) -> Augmentation:
        """For one luminance channel: no stain, colour or inversion ops, but uneven light, blur and noise."""
        return cls(stain=0.0, grey=0.0, tint=0.0, invert=0.0, bias=0.1, blur=0.3, noise=0.03)


SCAN_OPS = ("bias", "blur", "noise")


def affine_matrix(
    angle_deg: float = 0.0, scale: tuple[float, float] = (1.0, 1.0), shear: float = 0.0, flip: bool = False
) -> np.ndarray:
    """2 x 2 map from tile offsets (dy, dx) to section offsets: mirror, shear, scale, then rotate
    (counter-clockwise on screen for a positive angle)."""
    a = math.radians(angle_deg)
    rotation = np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])
    return rotation @ np.diag(scale) @ np.array([[1.0, shear], [0.0, 1.0]]) @ np.diag([1.0, -1.0 if flip else 1.0])


def warp(
    image: np.ndarray,
    classes: np.ndarray,
    matrix: np.ndarray,
    centre: tuple[float, float],
    shape: tuple[int, int],
    fill: np.ndarray,
    displacement: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A (C, *shape) image and its class map, sampled from `image`/`classes` at `centre` + `matrix`
    @ (pixel - output centre) (+ `displacement`, (2, *shape) in section pixels). Image bilinear with
    `fill` past the edge, classes nearest with background (0) past the edge."""
    grid = np.indices(shape, dtype=np.float64) - ((np.asarray(shape, float) - 1) / 2)[:, None, None]
    coords = np.tensordot(matrix, grid, axes=1) + np.asarray(centre, float)[:, None, None]
    if displacement is not None:
        coords += displacement
    coords = np.round(coords, 6)  # cos(90°) is 6e-17, not 0: an edge pixel must not fall past the edge
    out = np.stack(
        [
            ndi.map_coordinates(channel, coords, order=1, mode="constant", cval=float(f))
            for channel, f in zip(image, fill)
        ]
    ).astype(np.float32)
    labels = ndi.map_coordinates(classes, np.round(coords), order=0, mode="constant", cval=0).astype(classes.dtype)
    return out, labels


def elastic_field(shape: tuple[int, int], amplitude_px: float, rng: np.random.Generator, knots: int = 5) -> np.ndarray:
    """A smooth random (2, *shape) displacement: a coarse grid of offsets, cubic-interpolated."""
    coarse = rng.normal(0.0, amplitude_px, (2, knots, knots))
    return np.stack(
        [
            ndi.zoom(c, (shape[0] / knots, shape[1] / knots), order=3, mode="nearest")[: shape[0], : shape[1]]
            for c in coarse
        ]
    )


def random_geometry(aug: Augmentation, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """The tile's matrix (see `affine_matrix`) and elastic displacement (or None)."""
    zoom = math.exp(rng.uniform(-math.log(aug.scale), math.log(aug.scale)))
    stretch = rng.uniform(-aug.stretch, aug.stretch)
    matrix = affine_matrix(
        rng.uniform(0, 360) if aug.rotate else 0.0,
        (zoom * (1 + stretch), zoom * (1 - stretch)),
        rng.uniform(-aug.shear, aug.shear),
        rng.random() < aug.flip,
    )
    field = elastic_field((size, size), aug.elastic_px * size, rng) if rng.random() < aug.elastic else None
    return matrix, field


def stain_jitter(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Each of the haematoxylin, eosin and DAB optical densities of an RGB image scaled by up to
    `strength` and shifted a little (colour deconvolution with Ruifrok & Johnston's vectors)."""
    density = -np.log(np.clip(image, 1e-3, 1.0))
    hed = np.einsum("chw,cd->dhw", density, hed_from_rgb)
    hed = hed * rng.uniform(1 - strength, 1 + strength, (3, 1, 1)) + rng.uniform(-strength, strength, (3, 1, 1)) * 0.1
    return np.clip(np.exp(-np.einsum("dhw,dc->chw", hed, rgb_from_hed)), 0, 1)


def tint(grey: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An RGB picture of a grey section as if stained by one dye of random colour (Beer-Lambert:
    the grey level's optical density spread over the channels by a random absorption vector)."""
    density = -np.log(np.clip(grey, 1e-3, 1.0))
    absorption = rng.uniform(0.2, 1.0, 3)
    absorption /= absorption.max()
    return np.exp(-density[None] * absorption[:, None, None])


def photometric(image: np.ndarray, aug: Augmentation, rng: np.random.Generator) -> np.ndarray:
    """Colour, stain and intensity changes of a (C, H, W) image in [0, 1]."""
    if image.shape[0] == 3 and aug.stain:
        image = stain_jitter(image, aug.stain, rng)
    image = np.clip(image * rng.uniform(1 - aug.colour, 1 + aug.colour, (image.shape[0], 1, 1)), 0, 1)
    draw = rng.random()
    if image.shape[0] == 3 and draw < aug.grey + aug.tint:
        grey = image.mean(axis=0)
        image = np.repeat(grey[None], 3, axis=0) if draw < aug.grey else tint(grey, rng)
    mean = image.mean()
    image = (image - mean) * math.exp(rng.uniform(-math.log(aug.contrast), math.log(aug.contrast))) + mean
    image = np.clip(image + rng.uniform(-aug.brightness, aug.brightness), 0, 1)
    image = image ** math.exp(rng.uniform(-math.log(aug.gamma), math.log(aug.gamma)))
    if rng.random() < aug.invert:
        image = 1 - image
    if aug.bias or aug.blur or aug.noise:
        image = scan(image, aug, rng)
    return np.ascontiguousarray(image, dtype=np.float32)


def scan(image: np.ndarray, aug: Augmentation, rng: np.random.Generator) -> np.ndarray:
    """Uneven illumination, defocus and noise of a (C, H, W) image in [0, 1]."""
    if aug.bias:
        gain = np.exp(rng.uniform(0, aug.bias) * smooth_noise(image.shape[1:], max(image.shape[1:]) / 3, rng))
        image = image * gain[None]
    if aug.blur and rng.random() < aug.blur:
        image = ndi.gaussian_filter(image, (0, *[rng.uniform(0.3, 1.0)] * 2), mode="nearest")
    if aug.noise:
        image = image + rng.uniform(0, aug.noise) * rng.standard_normal(image.shape, np.float32)
    return np.clip(image, 0, 1)
