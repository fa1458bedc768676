"""Masks of the faults real sections show: pieces torn off, tears, folds, bubbles and debris.

Each function draws one fault's mask at random on a section's pixel grid; `atlas.damage` decides
which faults a section gets and what each does to its labels and picture.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi

from .render import smooth_noise


def edge_piece(tissue: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An irregular piece centred on the tissue's edge, 4-15 % of the section across."""
    edge = np.argwhere(tissue & ~ndi.binary_erosion(tissue))
    cy, cx = edge[rng.integers(len(edge))]
    radius = rng.uniform(0.04, 0.15) * max(tissue.shape)
    yy, xx = np.ogrid[: tissue.shape[0], : tissue.shape[1]]
    distance = np.hypot(yy - cy, (xx - cx) * rng.uniform(0.6, 1.6))
    return distance < radius * (1 + 0.3 * smooth_noise(tissue.shape, max(radius / 2, 1.0), rng))


def curve(
    shape: tuple[int, int], start: np.ndarray, end: np.ndarray, width: float, rng: np.random.Generator
) -> np.ndarray:
    """A gently bent line from `start` to `end` (row, col), `width` pixels wide."""
    t = np.linspace(0.0, 1.0, 2 * int(np.abs(end - start).max()) + 2)[:, None]
    bend = rng.normal(0.0, 0.1 * np.abs(end - start).max(), 2)
    ys, xs = np.round(start * (1 - t) + end * t + bend * np.sin(math.pi * t)).astype(int).T
    ok = (ys >= 0) & (ys < shape[0]) & (xs >= 0) & (xs < shape[1])
    mask = np.zeros(shape, bool)
    mask[ys[ok], xs[ok]] = True
    return ndi.binary_dilation(mask, iterations=int(width // 2)) if width >= 2 else mask


def crack(tissue: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A tear from the tissue's edge towards its middle, 1-3 pixels wide."""
    edge = np.argwhere(tissue & ~ndi.binary_erosion(tissue))
    start = edge[rng.integers(len(edge))].astype(float)
    end = start + (np.argwhere(tissue).mean(0) - start) * rng.uniform(0.2, 1.0)
    return curve(tissue.shape, start, end, rng.uniform(1.0, 3.5), rng)


def midline_crack(side: np.ndarray, tissue: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The hemispheres parted along the midline from the top, as coronal sections often are;
    `side` is each pixel's distance from the midline in voxels, signed."""
    rows = np.flatnonzero(tissue.any(1))
    depth = rows[0] + rng.uniform(0.1, 0.6) * (rows[-1] - rows[0])
    return (np.abs(side) < rng.uniform(0.5, 1.5)) & (np.arange(side.shape[0])[:, None] < depth)


def specks(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A few dark specks of dust or stain precipitate, anywhere on the slide."""
    dots = np.zeros(shape, np.float32)
    n = int(rng.integers(1, 12))
    dots[rng.integers(0, shape[0], n), rng.integers(0, shape[1], n)] = rng.uniform(1.0, 6.0, n)
    return ndi.gaussian_filter(dots, 1.0) > 0.12


def bubble(shape: tuple[int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """An air bubble under the coverslip: its inside and its dark rim."""
    centre = rng.uniform(0, 1, 2) * shape
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    distance = np.hypot(yy - centre[0], xx - centre[1])
    radius = rng.uniform(0.03, 0.12) * max(shape)
    return distance < radius, np.abs(distance - radius) < rng.uniform(0.7, 1.5)
