"""The tile grid: overlapping tiles over tissue only, each owning a core that no other tile owns.

Tiles step by `size - overlap` over each section's box; the core of a tile is the tile less half the
overlap on each inner side, so a section's cores partition its box exactly and stitching is a
matter of writing each core's pixels of its section.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .tissue import SectionMap, of_section


@dataclass(frozen=True)
class Tile:
    y: int  # top-left of the tile at the inference level (may lie past either edge: padded)
    x: int
    size: int
    core: tuple[slice, slice]  # in level coordinates, clipped to the level
    section: int = 0  # the section whose pixels the core writes (0: every section)

    def owns(self, sections: np.ndarray) -> np.ndarray:
        """Which pixels of its core (given their section numbers) this tile writes."""
        return of_section(sections, self.section)


def _axis(lo: int, hi: int, length: int, size: int, overlap: int) -> list[tuple[int, slice]]:
    """(start, core) of the fewest tiles stepping by `size - overlap` that cover [lo, hi), centred
    on it: a span that fits one tile sits in its middle, never in a corner."""
    step = size - overlap
    n = max(1, math.ceil((hi - lo - overlap) / step))
    first = lo - ((n - 1) * step + size - (hi - lo)) // 2
    out = []
    for i in range(n):
        start = first + i * step
        core_lo = start if i == 0 else start + overlap // 2
        core_hi = start + size if i == n - 1 else start + size - (overlap - overlap // 2)
        core = slice(max(core_lo, 0), min(core_hi, length))
        if core.start < core.stop:
            out.append((start, core))
    return out


def tile_grid(shape: tuple[int, int], size: int, overlap: int, sections: SectionMap | None = None) -> list[Tile]:
    """Tiles over a level of `shape`; with a `sections` map, a grid of its own over each section,
    centred on the section's box (as training shows sections), keeping the tiles whose core
    touches that section. Each section's cores partition its box; without a map, the level's."""
    if not 0 <= overlap < size:
        raise ValueError(f"overlap {overlap} must be in [0, tile size {size})")
    boxes = {0: (0, shape[0], 0, shape[1])} if sections is None else sections.boxes(shape)
    tiles = []
    for section, (y0, y1, x0, x1) in boxes.items():
        for y, ys in _axis(y0, y1, shape[0], size, overlap):
            for x, xs in _axis(x0, x1, shape[1], size, overlap):
                if sections is None or sections.touches(ys, xs, shape, section):
                    tiles.append(Tile(y, x, size, (ys, xs), section))
    return tiles


def resample_nearest(
    src: np.ndarray, src_shape: tuple[int, int], y0: int, y1: int, x0: int, x1: int, dst_shape: tuple[int, int]
) -> np.ndarray:
    """Pixels [y0:y1, x0:x1] of a level of `dst_shape`, taken by nearest neighbour from `src` (a whole
    level of `src_shape`). Label-safe in both directions; pixel centres are matched."""
    rows = np.minimum(((np.arange(y0, y1) + 0.5) * src_shape[0] / dst_shape[0]).astype(np.int64), src_shape[0] - 1)
    cols = np.minimum(((np.arange(x0, x1) + 0.5) * src_shape[1] / dst_shape[1]).astype(np.int64), src_shape[1] - 1)
    return src.take(rows, 0).take(cols, 1)


@dataclass(frozen=True)
class Grid:
    """The inference grid laid over a source level: `factor` source pixels per inference pixel.

    When no image level matches the model's µm/px, tiles live on this virtual grid and are
    resampled from the source level as they are read; their cores map back onto source pixels
    by pixel centres, so the mapped cores still partition the source level (no seams, no gaps)."""

    source: tuple[int, int]  # (height, width) of the source level
    factor: float = 1.0

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(max(1, round(n / self.factor)) for n in self.source)

    def _bound(self, b: int, axis: int) -> int:
        """First source pixel whose centre lies at or past inference coordinate b."""
        if b >= self.shape[axis]:
            return self.source[axis]
        return min(math.ceil(b * self.factor - 0.5), self.source[axis])

    def source_window(self, core: tuple[slice, slice]) -> tuple[slice, slice]:
        return tuple(slice(self._bound(s.start, a), self._bound(s.stop, a)) for a, s in enumerate(core))

    def tile_index(self, window: slice, axis: int, origin: int, size: int) -> np.ndarray:
        """For each source pixel of `window`, the tile pixel (tile starting at `origin`) holding its centre."""
        centres = (np.arange(window.start, window.stop) + 0.5) / self.factor
        return (
            np.clip(np.floor(centres).astype(np.int64), 0, self.shape[axis] - 1).clip(origin, origin + size - 1)
            - origin
        )
