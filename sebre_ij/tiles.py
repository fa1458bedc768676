"""The tile grid: overlapping tiles over tissue only, each owning a core that no other tile owns.

Tiles step by `size - overlap`; the core of a tile is the tile less half the overlap on each inner
side, so the cores partition the level exactly and stitching is a matter of writing cores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .tissue import SectionMap


@dataclass(frozen=True)
class Tile:
    y: int  # top-left of the tile at the inference level (may extend past the edge: padded)
    x: int
    size: int
    core: tuple[slice, slice]  # in level coordinates, clipped to the level


def _starts(length: int, size: int, overlap: int) -> list[int]:
    step = size - overlap
    n = max(1, math.ceil((length - overlap) / step))
    return [i * step for i in range(n)]


def _core(start: int, size: int, overlap: int, length: int) -> slice:
    lo = 0 if start == 0 else start + overlap // 2
    hi = length if start + size >= length else start + size - (overlap - overlap // 2)
    return slice(lo, hi)


def tile_grid(shape: tuple[int, int], size: int, overlap: int, sections: SectionMap | None = None) -> list[Tile]:
    """Tiles over a level of `shape`; with a `sections` map, only those touching tissue."""
    if not 0 <= overlap < size:
        raise ValueError(f"overlap {overlap} must be in [0, tile size {size})")
    height, width = shape
    tiles = []
    for y in _starts(height, size, overlap):
        for x in _starts(width, size, overlap):
            tile = Tile(y, x, size, (_core(y, size, overlap, height), _core(x, size, overlap, width)))
            if tile.core[0].start < tile.core[0].stop and tile.core[1].start < tile.core[1].stop:
                window = (slice(y, min(y + size, height)), slice(x, min(x + size, width)))
                if sections is None or sections.touches(*window, shape):
                    tiles.append(tile)
    return tiles


def resample_nearest(src: np.ndarray, src_shape: tuple[int, int], y0: int, y1: int, x0: int, x1: int,
                     dst_shape: tuple[int, int]) -> np.ndarray:
    """Pixels [y0:y1, x0:x1] of a level of `dst_shape`, taken by nearest neighbour from `src` (a whole
    level of `src_shape`). Label-safe in both directions; pixel centres are matched."""
    rows = np.minimum(((np.arange(y0, y1) + 0.5) * src_shape[0] / dst_shape[0]).astype(np.int64), src_shape[0] - 1)
    cols = np.minimum(((np.arange(x0, x1) + 0.5) * src_shape[1] / dst_shape[1]).astype(np.int64), src_shape[1] - 1)
    return src[np.ix_(rows, cols)]


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
        return np.clip(np.floor(centres).astype(np.int64), 0, self.shape[axis] - 1).clip(origin, origin + size - 1) - origin
