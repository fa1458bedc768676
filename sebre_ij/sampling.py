"""Where training tiles come from: real sections (`TileSampler`), sections cut from the atlas
(`AtlasTiles`), or both mixed (`MixedTiles`).

A section that fits a tile is placed one way whatever its source (`place`, `placed_tile`): centred
and moved within the room the tile leaves, or, at CUT_SECTIONS rate, cut by the tile's edge at any
offset, through one random geometry (augment.warp), then photometry. A model then cannot tell an
atlas tile from a real one by where the section lies in it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import cache

import numpy as np
from scipy import ndimage as ndi
from skimage import morphology

from .atlas import Atlas, SectionRecipe, atlas_section, load_atlas
from .augment import Augmentation, photometric, random_geometry, warp
from .datasets import Example
from .model_input import image_input, input_map
from .tissue import MARGIN_PX, fill_holes, glass_colour

# Of the tiles of sections that fit a tile, the share that shows them cut by the tile's edge at any
# offset: `segment`'s tile grid cuts sections anywhere, so the model must know them in part too.
CUT_SECTIONS = 0.5
HEMISECTION_JITTER = 0.02  # sd of the cut's place about the midline, as a share of the section's width
STATS_SEED = 0  # atlas sections for the card's normalisation and the loss's class weights: the same for every run
STATS_SECTIONS = 48


def labelled_extent(classes: np.ndarray) -> tuple[float, float, float] | None:
    """(y, x) centre and diagonal of the box around a section's labelled pixels; None if unlabelled."""
    ys, xs = np.nonzero(classes.any(axis=1))[0], np.nonzero(classes.any(axis=0))[0]
    if not len(ys):
        return None
    return (ys[0] + ys[-1]) / 2, (xs[0] + xs[-1]) / 2, math.hypot(ys[-1] - ys[0] + 1, xs[-1] - xs[0] + 1)


def place(
    extent: tuple[float, float, float], size: int, scale: float, rng: np.random.Generator
) -> tuple[float, float, float]:
    """(y, x, jitter) of a section in a tile: its centre and how far the tile's centre may move from
    it, so that it stays whole (zoomed by up to `scale`), or anywhere up to the tile's edge."""
    y, x, diagonal = extent
    if rng.random() < CUT_SECTIONS:  # as `segment`'s tile grid cuts a section: anywhere, in part
        return y, x, size / 2
    return y, x, max(size / max(scale, 1.0) - diagonal, 0.0) / 2


def placed_tile(
    image: np.ndarray,
    classes: np.ndarray,
    where: tuple[float, float, float],
    size: int,
    glass: np.ndarray,
    aug: Augmentation,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """An augmented (image, classes) tile around `where` (y, x, jitter): geometry sampled straight
    from the section, then photometry."""
    y, x, jitter = where
    matrix, field = random_geometry(aug, size, rng)
    shift = matrix @ rng.uniform(-jitter, jitter, 2)
    image, classes = warp(image, classes, matrix, (y + shift[0], x + shift[1]), (size, size), glass, field)
    return photometric(image, aug, rng), classes


def half_section(
    image: np.ndarray, classes: np.ndarray, glass: np.ndarray, at: float, left: bool
) -> tuple[np.ndarray, np.ndarray]:
    """The section with the columns on one side of column `at` made glass and unlabelled: those
    right of it where `left` keeps the left half, else those left of it."""
    columns = np.arange(classes.shape[1])
    gone = columns >= at if left else columns < at
    image, classes = image.copy(), classes.copy()
    image[:, :, gone] = glass[:, None, None]
    classes[:, gone] = 0
    return image, classes


def hemisection(
    image: np.ndarray, classes: np.ndarray, glass: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A random half of the section, cut at its labelled box's middle column moved by
    HEMISECTION_JITTER (`half_section`): a hemisection of an upright coronal section, whose labels
    go with its tissue (as atlas.damage cuts generated sections)."""
    xs = np.flatnonzero(classes.any(axis=0))
    if not len(xs):
        return image, classes
    at = (xs[0] + xs[-1]) / 2 + rng.normal(0.0, HEMISECTION_JITTER * (xs[-1] - xs[0] + 1))
    return half_section(image, classes, glass, at, left=bool(rng.random() < 0.5))


class TileSampler:
    """Training tiles. When every section's labelled extent fits in a tile at any angle and zoom,
    each tile shows one section, as SeBRe trained: every region is then one whole object among its
    neighbours, the context that tells thalamus from midbrain. Half of those tiles show it whole,
    half cut by the tile's edge (CUT_SECTIONS). Larger sections give class-balanced tiles: a class
    drawn uniformly among those in the training set, then one of its pixels drawn uniformly over all
    sections, placed anywhere in the tile's middle three quarters, so a region found in few sections
    is seen as often as cortex. A share `hemisections` of the tiles shows one half of the section
    only (`hemisection`): users cut sections in two, one half for each assay."""

    def __init__(
        self, examples: list[Example], size: int, glass: np.ndarray, aug: Augmentation, hemisections: float = 0.0
    ):
        self.examples, self.size, self.glass, self.aug = examples, size, glass, aug
        self.hemisections = hemisections
        self.counts = np.stack([np.bincount(e.classes.ravel(), minlength=256) for e in examples]).astype(float)
        self.classes = np.flatnonzero(self.counts[:, 1:].sum(axis=0)) + 1
        self.extents = [labelled_extent(e.classes) for e in examples]
        # zoomed in by up to aug.scale, a section must still fit: its diagonal times the zoom
        self.whole = [ext is not None and ext[2] * max(aug.scale, 1.0) <= size for ext in self.extents]

    def centre(self, rng: np.random.Generator) -> tuple[int, float, float, float]:
        """(example index, y, x, jitter): the tile's centre in a section, and how far to move it."""
        if all(self.whole):
            ex = int(rng.integers(len(self.examples)))
            return ex, *place(self.extents[ex], self.size, self.aug.scale, rng)
        cls = int(rng.choice(self.classes))
        ex = int(rng.choice(len(self.examples), p=self.counts[:, cls] / self.counts[:, cls].sum()))
        classes = self.examples[ex].classes
        pixels = np.flatnonzero(classes.ravel() == cls)
        y, x = divmod(int(pixels[rng.integers(len(pixels))]), classes.shape[1])
        return ex, y, x, 3 * self.size / 8

    def tile(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """An augmented (image, classes) tile."""
        ex, *where = self.centre(rng)
        image, classes = self.examples[ex].image, self.examples[ex].classes
        if self.hemisections and rng.random() < self.hemisections:
            image, classes = hemisection(image, classes, self.glass, rng)
        return placed_tile(image, classes, where, self.size, self.glass, self.aug, rng)


def model_view(examples: list[Example], mode: str) -> list[Example]:
    """Real sections as the model sees them (model_input.image_input: measured on each section
    itself, as `segment` measures a slide)."""
    if mode != "luminance":
        return examples
    return [replace(e, image=image_input(mode, e.image)) for e in examples]


@cache
def shared_atlas(folder: str) -> Atlas:
    """The atlas in `folder`, read once per process (DataLoader workers forked later share it)."""
    return load_atlas(folder)


@dataclass(frozen=True)
class AtlasView:
    """How a generated section becomes model input: `mode` "luminance" (model_input's map, measured
    on the section's known tissue rather than a guess of it) or "channels", the picture brought to
    the real data's `channels` (RGB from a fluorescence grey, grey from RGB)."""

    mode: str
    channels: int = 1

    def __call__(self, image: np.ndarray, tissue: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(input image, glass colour) of a section's (C, H, W) picture and its tissue mask."""
        sections = ndi.binary_dilation(fill_holes(tissue), morphology.disk(MARGIN_PX)).astype(np.uint8)
        if self.mode == "luminance":
            return input_map(self.mode, image, sections).apply(image), np.ones(1, np.float32)
        if image.shape[0] != self.channels:
            image = np.repeat(image.mean(axis=0, keepdims=True), self.channels, axis=0)
        return image, glass_colour(image, sections).astype(np.float32)


class AtlasTiles:
    """Tiles of sections generated from the atlas (atlas.atlas_section), a new section per tile,
    each placed as TileSampler places a real section that fits (`place`). It holds the atlas's
    folder, not its volumes, so DataLoader workers get it cheaply under any start method."""

    def __init__(self, folder: str, recipe: SectionRecipe, size: int, aug: Augmentation, view: AtlasView):
        self.folder, self.recipe, self.size, self.aug, self.view = folder, recipe, size, aug, view

    def section(self, rng: np.random.Generator) -> tuple[Example, np.ndarray]:
        """A generated section as model input, and its glass colour."""
        image, classes, section = atlas_section(shared_atlas(self.folder), self.recipe, rng)
        image, glass = self.view(image, section.tissue | (classes > 0))
        return Example(image, classes, f"atlas_{section.orientation}", self.recipe.pixel_size_um), glass

    def tile(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """An augmented (image, classes) tile of a new section."""
        example, glass = self.section(rng)
        where = place(labelled_extent(example.classes), self.size, self.aug.scale, rng)
        return placed_tile(example.image, example.classes, where, self.size, glass, self.aug, rng)

    def sample(self, n: int = STATS_SECTIONS, seed: int = STATS_SEED) -> list[Example]:
        """`n` sections from a fixed seed: what the atlas's tiles hold, for statistics."""
        rng = np.random.default_rng(seed)
        return [self.section(rng)[0] for _ in range(n)]


class MixedTiles:
    """Atlas tiles at a share `fraction` of draws, real ones otherwise (none real when `real` is None)."""

    def __init__(self, real: TileSampler | None, atlas: AtlasTiles, fraction: float):
        self.real, self.atlas, self.fraction = real, atlas, fraction

    def tile(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        if self.real is None or rng.random() < self.fraction:
            return self.atlas.tile(rng)
        return self.real.tile(rng)
