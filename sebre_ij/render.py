"""Pictures of brain sections drawn from their fine structure map, in random stains and modalities.

A section's labels say where each Allen structure is; what a stain makes of it is drawn at random,
as SynthSeg does for MRI (Billot et al., Medical Image Analysis 2023): nothing but shape and context
then tells regions apart, so a model trained on the pictures meets any stain. `render` works in four
steps:

1. `tissue_density`: a stain density per structure, either independent per structure (SynthSeg)
   or varied down the structure tree (a child near its parent: subtle contrast between regions,
   fibre tracts lighter or darker, ventricles mostly empty, as real sections look), or the average
   two-photon template cut at the same plane (a real look), plain, inverted or textured;
2. `_texture`: soft boundaries, fine grain and specks per structure, layers the atlas lacks (a band
   along the surface and one along the white matter, per class: cortex layer 1, the cerebellum's
   molecular and granular layers), a rim where stain enters at the cut edge, uneven thickness;
3. `_overlay`: folds, bubbles and debris that `atlas.damage` drew;
4. `_optics`: blur and coarser scans, then brightfield (dark stain on bright glass, Beer-Lambert with
   a random stain and counterstain, RGB) or fluorescence (bright on dark, one channel), with an
   illumination bias, noise and gamma.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

FIBRE_TRACTS = "fiber_tracts"
VENTRICLES = "ventricles"
CAUDOPUTAMEN = 672
"""Allen id of the caudoputamen, crossed by bundles of fibres the atlas does not draw."""

STAINS = {
    "dab": (0.22, 0.49, 0.84),
    "haematoxylin": (0.650, 0.704, 0.286),
    "eosin": (0.093, 0.954, 0.283),
    "cresyl_violet": (0.55, 0.85, 0.30),
    "grey": (0.577, 0.577, 0.577),
}
"""Optical density per unit stain in R, G, B: DAB as measured on GLTa's tissue (Ruifrok and Johnston's
is (0.27, 0.57, 0.78), redder), Ruifrok and Johnston's haematoxylin and eosin, cresyl violet (Nissl)
and a neutral grey."""


@dataclass(frozen=True)
class StructureTree:
    """Allen structures as indices 0..n-1 in id order (index 0: outside the brain).

    `parents` is each index's parent index (a root is its own parent), `depth` its steps from the
    root, `classes` the index of its class in `class_names`."""

    ids: np.ndarray
    parents: np.ndarray
    depth: np.ndarray
    classes: np.ndarray
    class_names: tuple[str, ...]

    def index(self, annotation: np.ndarray) -> np.ndarray:
        """Indices of Allen ids; ids the table lacks become 0 (outside the brain)."""
        found = np.searchsorted(self.ids, annotation).clip(0, len(self.ids) - 1)
        return np.where(self.ids[found] == annotation, found, 0).astype(np.uint16)

    @property
    def grey(self) -> np.ndarray:
        """Per class: 1 for grey matter, 0 for background, fibre tracts and ventricles."""
        names = np.array(self.class_names)
        return (~np.isin(names, [self.class_names[0], FIBRE_TRACTS, VENTRICLES])).astype(float)

    def of_class(self, name: str) -> np.ndarray:
        """Which structures fall in the class `name` (none if the table has no such class)."""
        if name not in self.class_names:
            return np.zeros(len(self.ids), bool)
        return self.classes == self.class_names.index(name)


@dataclass(frozen=True)
class Look:
    """Shares and ranges of the appearances `render` draws; part of the model card.

    Attributes
    ----------
    fluorescence : share drawn bright on dark in one channel; the rest brightfield RGB.
    template : share drawn from the average two-photon template cut at the same plane.
    synthseg : share of the rest with an independent random density per structure.
    region_sd : range of the sd of log density each level of the structure tree adds.
    class_sd : range of the sd of a log density shared by each class's structures (regions differ
        more than their parts).
    tracts : range of the log density added to fibre tracts (GLTa's, over its registered labels:
        -0.1 to -0.4 against cortex, and paler where tracts are wide; myelin stains darken them).
    empty_ventricles : share in which ventricles are open, holding next to no stain.
    grain : range of the sd of the log density of fine texture (cells, vessels; GLTa at 25 µm/px:
        0.2-0.3), drawn per section and varied per structure.
    grain_um : range of the fine texture's scale.
    edge_um : range of the blur of boundaries between structures (partial volume, registration).
    speckle : share of structures with pale or dark specks (large cells, vessels).
    fascicles : share of sections showing the caudoputamen's fibre bundles, 10-18 % of its area,
        with the density fibre tracts have over grey matter (GLTa's are pale).
    rim : range of the log density change at the tissue's edge, where stain enters from the cut.
    laminae : sd of the log density of a band along the surface and one along the fibre tracts,
        per class (the atlas has no cerebellar or hippocampal layers; real sections show them).
    lamina_um : range of those bands' widths.
    mottle : largest sd of the log density varying within structures over 50-200 µm.
    thickness : largest sd of the log thickness over a section.
    optical_density : range of brightfield tissue's median optical density (GLTa DAB: 0.6-2.1).
    counterstain : share of brightfield sections with a second stain.
    blur_px : range of the blur's sd, in pixels.
    coarse : share scanned at 1.3-2.5 times the pixel size and brought back.
    bias : largest sd of the log illumination over the image.
    noise : largest sd of the pixel noise.
    gamma : gamma drawn log-uniformly in [exp(-gamma), exp(gamma)].
    white_glass : share of brightfield images white balanced so glass is pure white (as GLTa).
    stains : weight of each brightfield stain of STAINS (counterstains too).
    """

    fluorescence: float = 0.3
    template: float = 0.25
    synthseg: float = 0.3
    region_sd: tuple[float, float] = (0.02, 0.1)
    class_sd: tuple[float, float] = (0.05, 0.35)
    tracts: tuple[float, float] = (-1.5, 0.5)
    empty_ventricles: float = 0.7
    grain: tuple[float, float] = (0.05, 0.3)
    grain_um: tuple[float, float] = (8.0, 25.0)
    edge_um: tuple[float, float] = (0.0, 30.0)
    speckle: float = 0.1
    fascicles: float = 0.8
    rim: tuple[float, float] = (-0.3, 0.5)
    laminae: float = 0.3
    lamina_um: tuple[float, float] = (40.0, 150.0)
    mottle: float = 0.15
    thickness: float = 0.25
    optical_density: tuple[float, float] = (0.4, 2.5)
    counterstain: float = 0.3
    blur_px: tuple[float, float] = (0.0, 0.8)
    coarse: float = 0.2
    bias: float = 0.1
    noise: float = 0.03
    gamma: float = 0.3
    white_glass: float = 0.5
    stains: dict = field(
        default_factory=lambda: {"dab": 0.35, "cresyl_violet": 0.2, "haematoxylin": 0.15, "eosin": 0.1, "grey": 0.2}
    )


def smooth_noise(shape: tuple[int, int], scale: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise smooth over `scale` pixels, zero mean and unit sd.

    Notes
    -----
    From 8 pixels, equals A N B^T with N standard normal on a grid `scale` pixels apart and A, B
    Gaussian bumps of sd `scale` (a Gaussian filter's result at a fraction of its cost), multiplied
    by einsum: BLAS threads, idling hot between many small products, tripled the generator's time
    on 2 cores."""
    if scale < 8:
        field = ndi.gaussian_filter(rng.standard_normal(shape), scale)
    else:

        def bumps(n: int) -> np.ndarray:
            centres = np.arange(-2, n / scale + 3) * scale
            return np.exp(-0.5 * ((np.arange(n)[:, None] - centres[None]) / scale) ** 2)

        rows, cols = bumps(shape[0]), bumps(shape[1])
        grid = rng.standard_normal((rows.shape[1], cols.shape[1]))
        field = np.einsum("ij,kj->ik", np.einsum("ij,jk->ik", rows, grid), cols)
    return ((field - field.mean()) / max(float(field.std()), 1e-6)).astype(np.float32)


def _fine_noise(shape: tuple[int, int], sigma_px: float, rng: np.random.Generator) -> np.ndarray:
    """Noise smooth over `sigma_px` (at least 0.4 px: finer is pixel noise), unit sd."""
    noise = ndi.gaussian_filter(rng.standard_normal(shape, np.float32), max(sigma_px, 0.4))
    return noise / max(float(noise.std()), 1e-6)


def _down_tree(tree: StructureTree, sd: float, rng: np.random.Generator) -> np.ndarray:
    """Log density per structure: its parent's plus a step of `sd`, roots first."""
    log = np.zeros(len(tree.ids))
    steps = rng.normal(0.0, sd, len(tree.ids))
    for level in range(int(tree.depth.max()) + 1):
        k = np.flatnonzero(tree.depth == level)
        log[k] = log[tree.parents[k]] * (tree.parents[k] != k) + steps[k]
    return log


def structure_densities(tree: StructureTree, look: Look, rng: np.random.Generator) -> np.ndarray:
    """A stain density per structure index: independent (SynthSeg) or down the tree, fibre tracts
    shifted together, ventricles often empty."""
    if rng.random() < look.synthseg:
        log = rng.uniform(-1.6, 0.4, len(tree.ids))
    else:
        log = _down_tree(tree, rng.uniform(*look.region_sd), rng)
        log += rng.normal(0.0, rng.uniform(*look.class_sd), len(tree.class_names))[tree.classes]
        log[tree.of_class(FIBRE_TRACTS)] += rng.uniform(*look.tracts)
    density = np.exp(log)
    if rng.random() < look.empty_ventricles:
        density[tree.of_class(VENTRICLES)] = np.exp(log.mean()) * rng.uniform(0.0, 0.25)
    return density.astype(np.float32)


def _median_one(density: np.ndarray, tissue: np.ndarray) -> np.ndarray:
    """`density` over its median in the tissue, 0 on glass."""
    scale = float(np.median(density[tissue])) if tissue.any() else 1.0
    return np.where(tissue, density / max(scale, 1e-6), 0.0).astype(np.float32)


def tissue_density(
    structures: np.ndarray,
    tissue: np.ndarray,
    template: Callable[[], np.ndarray],
    tree: StructureTree,
    look: Look,
    rng: np.random.Generator,
) -> np.ndarray:
    """Stain density of every pixel before texture, median 1 in the tissue and 0 on glass."""
    if rng.random() >= look.template:
        return _median_one(structure_densities(tree, look, rng)[structures], tissue)
    density = _median_one(template(), tissue)
    if rng.random() < 0.5:
        density = np.clip(2.0 - density, 0.05, None)
    if rng.random() < 0.5:
        density = density * structure_densities(tree, look, rng)[structures] ** 0.5
    return _median_one(density, tissue)


def _blur_within(image: np.ndarray, mask: np.ndarray, sigma: float) -> np.ndarray:
    """`image` blurred inside `mask` only (normalised convolution), so the tissue's edge stays sharp."""
    weight = ndi.gaussian_filter(mask.astype(np.float32), sigma)
    blurred = ndi.gaussian_filter(np.where(mask, image, 0.0).astype(np.float32), sigma)
    return np.where(mask, blurred / np.maximum(weight, 1e-3), image).astype(np.float32)


@dataclass(frozen=True)
class Drawing:
    """What every step of a section's texture draws from: its structure indices of `tree`, where
    tissue is seen, the pixel size, the look and the random generator."""

    structures: np.ndarray
    tissue: np.ndarray
    tree: StructureTree
    pixel_um: float
    look: Look
    rng: np.random.Generator


def _laminae(d: Drawing) -> np.ndarray:
    """Density factors of a band along the tissue's edge and one along the fibre tracts, per class.

    Notes
    -----
    Equals exp(a[c] * 2 * near(glass) + b[c] * 2 * near(tracts)), c each pixel's class, a[c] the rim
    plus, in grey matter, a class's own, near(m) mask m blurred by a random band width (0.5 at its edge)."""
    tree, look, rng, pixel_um = d.tree, d.look, d.rng, d.pixel_um
    n = len(tree.class_names)
    pixel_class = tree.classes[d.structures]
    a = rng.uniform(*look.rim) + rng.normal(0.0, look.laminae, n) * tree.grey
    b = rng.normal(0.0, look.laminae, n) * tree.grey
    glass = ndi.gaussian_filter((~d.tissue).astype(np.float32), rng.uniform(*look.lamina_um) / pixel_um)
    tracts = ndi.gaussian_filter(
        tree.of_class(FIBRE_TRACTS)[d.structures].astype(np.float32), rng.uniform(*look.lamina_um) / pixel_um
    )
    return np.exp(2.0 * (a.astype(np.float32)[pixel_class] * glass + b.astype(np.float32)[pixel_class] * tracts))


def _specks(
    density: np.ndarray,
    structures: np.ndarray,
    tree: StructureTree,
    pixel_um: float,
    look: Look,
    rng: np.random.Generator,
) -> np.ndarray:
    """Pale or dark specks in random structures, and the caudoputamen's fibre bundles."""
    specked = (rng.random(len(tree.ids)) < look.speckle)[structures]
    if specked.any():
        noise = _fine_noise(density.shape, rng.uniform(*look.grain_um) / pixel_um, rng)
        spots = specked & (noise > rng.uniform(1.0, 2.0))
        density = np.where(spots, density * rng.choice([0.4, 1.7]), density)
    striatum = structures == int(tree.index(np.array([CAUDOPUTAMEN]))[0]) if CAUDOPUTAMEN in tree.ids else None
    if striatum is not None and striatum.any() and rng.random() < look.fascicles:
        noise = _fine_noise(density.shape, rng.uniform(10, 20) / pixel_um, rng)
        bundles = striatum * np.clip(2.0 * (noise - rng.uniform(0.9, 1.3)), 0.0, 1.0)
        density = density * np.exp(rng.uniform(*look.tracts) * bundles)
    return density


def _texture(density: np.ndarray, d: Drawing) -> np.ndarray:
    """Soft boundaries, fine grain and specks per structure, layers, a rim at the cut edge, uneven thickness."""
    structures, tissue, tree, pixel_um, look, rng = d.structures, d.tissue, d.tree, d.pixel_um, d.look, d.rng
    shape, n = density.shape, len(tree.ids)
    density = _blur_within(density, tissue, rng.uniform(*look.edge_um) / pixel_um)
    grain = (rng.uniform(*look.grain) * rng.uniform(0.5, 1.5, n)).astype(np.float32)[structures]
    density = density * np.exp(grain * _fine_noise(shape, rng.uniform(*look.grain_um) / pixel_um, rng))
    density = _specks(density, structures, tree, pixel_um, look, rng)
    density = density * _laminae(d)
    mottle = rng.uniform(0.0, look.mottle) * smooth_noise(shape, max(rng.uniform(50, 200) / pixel_um, 1.0), rng)
    thick = mottle + rng.uniform(0.0, look.thickness) * smooth_noise(shape, rng.uniform(10, 40), rng)
    return np.where(tissue, density * np.exp(thick), 0.0).astype(np.float32)


def _overlay(density: np.ndarray, overlay: dict, rng: np.random.Generator) -> np.ndarray:
    """Folds (two layers of tissue), bubbles (a dark rim, lighter inside) and debris (dark specks)."""
    density = density.copy()
    if "fold" in overlay:
        density[overlay["fold"]] *= rng.uniform(1.6, 2.2)
    if "bubble" in overlay:
        density[overlay["bubble"]] *= rng.uniform(0.5, 0.9)
        density[overlay["bubble_rim"]] += rng.uniform(0.8, 2.0)
    if "debris" in overlay:
        density[overlay["debris"]] = rng.uniform(1.5, 4.0)
    return density


def _coarser(image: np.ndarray, factor: float) -> np.ndarray:
    """`image` scanned `factor` times coarser and brought back to its pixel grid (bilinear)."""
    small = ndi.zoom(image, 1.0 / factor, order=1, grid_mode=True, mode="nearest")
    zoom = (image.shape[0] / small.shape[0], image.shape[1] / small.shape[1])
    return ndi.zoom(small, zoom, order=1, grid_mode=True, mode="nearest")


def _optics(density: np.ndarray, look: Look, rng: np.random.Generator) -> np.ndarray:
    """Blur, and sometimes a coarser scan."""
    density = ndi.gaussian_filter(density, rng.uniform(*look.blur_px))
    if rng.random() < look.coarse:
        density = _coarser(density, rng.uniform(1.3, 2.5))
    return density


def _stain(weights: dict, rng: np.random.Generator) -> np.ndarray:
    """A stain's unit absorption vector, drawn by `weights`, jittered per channel."""
    names = list(weights)
    p = np.array([weights[n] for n in names], float)
    vector = np.array(STAINS[names[int(rng.choice(len(names), p=p / p.sum()))]]) * rng.uniform(0.9, 1.1, 3)
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def brightfield(density: np.ndarray, second: np.ndarray | None, look: Look, rng: np.random.Generator) -> np.ndarray:
    """(3, H, W) RGB: glass light through the stain (Beer-Lambert), dark tissue on bright glass.

    Notes
    -----
    Equals glass * bias * exp(-(k * density * s + k2 * second * s2)) with unit stain vectors s, s2,
    then noise and gamma; `k` is the tissue's median optical density."""
    strength = math.exp(rng.uniform(*np.log(look.optical_density)))
    optical = strength * density[None] * _stain(look.stains, rng)[:, None, None]
    if second is not None:
        optical = optical + rng.uniform(0.1, 0.5) * strength * second[None] * _stain(look.stains, rng)[:, None, None]
    glass = np.ones(3) if rng.random() < look.white_glass else rng.uniform(0.8, 1.0) * rng.uniform(0.96, 1.0, 3)
    light = glass[:, None, None].astype(np.float32) * np.exp(
        rng.uniform(0, look.bias) * smooth_noise(density.shape, max(density.shape) / 3, rng)
    )
    return _finish(light * np.exp(-optical), look, rng)


def fluorescence(density: np.ndarray, look: Look, rng: np.random.Generator) -> np.ndarray:
    """(1, H, W): bright tissue on dark glass, noise partly signal-dependent (photon counts)."""
    bias = np.exp(rng.uniform(0, look.bias) * smooth_noise(density.shape, max(density.shape) / 3, rng))
    image = rng.uniform(0.0, 0.1) + rng.uniform(0.25, 0.7) * density * bias
    image = image + rng.uniform(0.0, look.noise) * np.sqrt(np.clip(image, 0, None)) * rng.standard_normal(image.shape)
    return _finish(image[None], look, rng)


def _finish(image: np.ndarray, look: Look, rng: np.random.Generator) -> np.ndarray:
    """Additive noise, clipping to [0, 1] and gamma, as float32."""
    image = image + rng.uniform(0.0, look.noise) * rng.standard_normal(image.shape, np.float32)
    return (np.clip(image, 0.0, 1.0) ** math.exp(rng.uniform(-look.gamma, look.gamma))).astype(np.float32)


def render(
    structures: np.ndarray,
    tissue: np.ndarray,
    template: Callable[[], np.ndarray],
    overlay: dict,
    tree: StructureTree,
    pixel_um: float,
    look: Look,
    rng: np.random.Generator,
) -> np.ndarray:
    """A section's picture in [0, 1]: (3, H, W) brightfield RGB or (1, H, W) fluorescence.

    `structures` holds structure indices of `tree`, `tissue` where tissue is seen, `template()` the
    average template at each pixel (called only for the template look, as cutting it costs),
    `overlay` the masks of `atlas.damage` that change only the picture, `pixel_um` the pixel size."""
    density = tissue_density(structures, tissue, template, tree, look, rng)
    density = _texture(density, Drawing(structures, tissue, tree, pixel_um, look, rng))
    density = _optics(_overlay(density, overlay, rng), look, rng)
    if rng.random() < look.fluorescence:
        return fluorescence(density, look, rng)
    second = None
    if rng.random() < look.counterstain:
        second = _optics(tissue_density(structures, tissue, template, tree, look, rng), look, rng)
    return brightfield(density, second, look, rng)
