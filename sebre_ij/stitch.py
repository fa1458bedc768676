"""Stitching: tile results into the label layer, each label chunk written once and whole.

Every pixel of a section belongs to exactly one tile's core (tiles.py), so a tile writes its own
section's pixels of its core and the order of tiles does not change the labels. A core covers
parts of up to four chunks; written as they come, each part would cost a read-modify-write of a
whole compressed chunk, several times over. The tiles are known before they run, so each chunk is
held in memory from the first tile whose core touches it to the last, then written once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .labels import LABEL_DTYPE, encode
from .layer import MARGIN, MARGIN_DTYPE, LabelLayer
from .pyramid import CoarserLevels
from .tiles import Grid, Tile
from .tissue import SectionMap

# Chunks held at once, at most (in bytes of label values and written-masks): past it, the oldest
# are written early and merged with the store when written again. Tiles run row by row over one
# section at a time, so a section's two rows of chunks are open, far below this.
MAX_OPEN_BYTES = 256 << 20

# (tile, classes, scores) from the model or an oracle, and the class margins (0 to 1) where known
Result = tuple[Tile, np.ndarray, np.ndarray] | tuple[Tile, np.ndarray, np.ndarray, np.ndarray]
Key = tuple[int, int]  # (row, column) of a chunk of the layer's level


class RegionStats:
    """Pixel counts and summed scores per label value, to report each region's mean score."""

    def __init__(self):
        self.count: dict[int, int] = {}
        self.score: dict[int, float] = {}

    def to_dict(self) -> dict:
        return {
            "count": {str(k): v for k, v in self.count.items()},
            "score": {str(k): v for k, v in self.score.items()},
        }

    @classmethod
    def from_dict(cls, data: dict) -> RegionStats:
        stats = cls()
        stats.count = {int(k): int(v) for k, v in data.get("count", {}).items()}
        stats.score = {int(k): float(v) for k, v in data.get("score", {}).items()}
        return stats

    def add(self, values: np.ndarray, scores: np.ndarray) -> None:
        # label values are small (section x class base + class): counted, not sorted
        values = values.ravel().astype(np.intp)
        counts = np.bincount(values)
        sums = np.bincount(values, weights=scores.ravel())
        for v in np.flatnonzero(counts[1:]) + 1:
            self.count[int(v)] = self.count.get(int(v), 0) + int(counts[v])
            self.score[int(v)] = self.score.get(int(v), 0.0) + float(sums[v])

    def merge(self, other: RegionStats) -> None:
        """Add a batch's stats; batches merged in order give the same sums wherever they ran."""
        for v, c in other.count.items():
            self.count[v] = self.count.get(v, 0) + c
            self.score[v] = self.score.get(v, 0.0) + other.score[v]


@dataclass(frozen=True)
class TileRun:
    """What a run of every plane's tiles wrote: region stats, tiles and the most sections on a plane."""

    stats: RegionStats
    tiles: int
    sections: int


@dataclass(frozen=True)
class PlaneTiles:
    """One plane's tiles and what turns their results into label values: where cores go, and
    their sections."""

    z: int
    grid: Grid
    sections: SectionMap
    class_base: int  # of the model's classes: label values are section * class_base + class
    tiles: tuple[Tile, ...]


def _as_slice(index: np.ndarray) -> slice | np.ndarray:
    """A run of consecutive pixels (a tile read without resampling) as a slice: a view, not a copy."""
    if len(index) and index[-1] - index[0] == len(index) - 1 and (np.diff(index) == 1).all():
        return slice(int(index[0]), int(index[-1]) + 1)
    return index


def quantized(margins: np.ndarray) -> np.ndarray:
    """Class margins (0 to 1) as stored in the layer's margin array: 1 to 65535, 0 kept for unknown."""
    return (1 + np.rint(np.clip(margins, 0, 1) * 65534)).astype(MARGIN_DTYPE)


def _gather(tile: np.ndarray, local: tuple) -> np.ndarray:
    """Tile pixels at (rows, columns), each a slice or an index array."""
    rows, cols = local
    tile = tile[rows] if isinstance(rows, slice) else tile.take(rows, 0)
    return tile[:, cols] if isinstance(cols, slice) else tile.take(cols, 1)


def no_lock(layer: LabelLayer, window: tuple[slice, slice]) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


@dataclass
class _Chunk:
    values: np.ndarray  # label values written so far
    margins: np.ndarray  # their class margins (quantized), 0 where the model gave none
    written: np.ndarray  # which pixels this writer wrote
    first: int  # the first tile that wrote into it since it was opened
    merge: bool  # the store may hold pixels this writer does not: keep them when writing


class ChunkWriter:
    """Writes tiles [start, stop) of a plane into the layer, in their order, chunk by chunk.

    A chunk that tiles outside the range also touch (a killed run's, another worker's task) is
    merged with the store when written, under `lock`, which guards it against other processes.
    `durable()` says how far every tile is in the store: where a killed run resumes. With `pyramid`
    (one process runs all the plane's tiles, in region mode), the coarser levels are written as
    their chunks' chunks are final: beside the model instead of after it. The class margins go
    into the layer's margin array chunk for chunk with the values: the finer levels are drawn from
    both once every tile is in (finer.py)."""

    def __init__(
        self,
        layer: LabelLayer,
        plane: PlaneTiles,
        start: int = 0,
        stop: int | None = None,
        lock: Callable = no_lock,
        max_open_bytes: int = MAX_OPEN_BYTES,
        pyramid: bool = False,
    ):
        self.layer, self.plane, self.lock = layer, plane, lock
        self.level_shape = plane.grid.source
        stop = len(plane.tiles) if stop is None else stop
        self.last: dict[Key, int] = {}  # the last tile of the range touching each chunk
        self.outside: set[Key] = set()
        for i, tile in enumerate(plane.tiles):
            for key in self.layer.chunks_under(self._window(tile)):
                if start <= i < stop:
                    self.last[key] = i
                else:
                    self.outside.add(key)
        written = set(self.last)
        self.coarser = CoarserLevels(layer, plane.z, written, self.outside - written) if pyramid else None
        self.open: dict[Key, _Chunk] = {}  # oldest first
        per_pixel = LABEL_DTYPE().itemsize + MARGIN_DTYPE().itemsize + 1
        self.max_open = max(1, max_open_bytes // (layer.chunks[0] * layer.chunks[1] * per_pixel))
        self.next = start

    def _window(self, tile: Tile) -> tuple[slice, slice]:
        return self.plane.grid.source_window(tile.core)

    def put(self, results: list[Result]) -> RegionStats:
        """Store results of the next tiles; write the chunks no later tile of the range touches.
        Returns their region stats."""
        stats = RegionStats()
        for tile, classes, scores, *margins in results:
            i, self.next = self.next, self.next + 1
            ys, xs = window = self._window(tile)
            grid = self.plane.grid
            local = (
                _as_slice(grid.tile_index(ys, 0, tile.y, tile.size)),
                _as_slice(grid.tile_index(xs, 1, tile.x, tile.size)),
            )
            sections = self.plane.sections.sample(ys, xs, self.level_shape)
            own = tile.owns(sections)
            values = encode(np.where(own, sections, 0), _gather(classes, local), self.plane.class_base)
            stats.add(values, _gather(scores, local))
            known = quantized(_gather(margins[0], local)) if margins else np.zeros(values.shape, MARGIN_DTYPE)
            keys = self.layer.chunks_under(window)
            for key in keys:
                self._place(key, i, window, (values, known), own)
            for key in keys:
                if self.last[key] == i:
                    self._write(key)
        while len(self.open) > self.max_open:
            self._write(next(iter(self.open)), early=True)
        return stats

    def _place(self, key: Key, i: int, window: tuple[slice, slice], core: tuple, own: np.ndarray) -> None:
        """Copy a core's own pixels (`core`: its values and margins) into the part of a chunk it covers."""
        cw = self.layer.chunk_window(key)
        chunk = self.open.get(key)
        if chunk is None:
            shape = tuple(s.stop - s.start for s in cw)
            chunk = self.open[key] = _Chunk(
                np.zeros(shape, LABEL_DTYPE),
                np.zeros(shape, MARGIN_DTYPE),
                np.zeros(shape, bool),
                i,
                key in self.outside,
            )
        part = tuple(slice(max(w.start, c.start), min(w.stop, c.stop)) for w, c in zip(window, cw))
        src = tuple(slice(p.start - w.start, p.stop - w.start) for p, w in zip(part, window))
        dst = tuple(slice(p.start - c.start, p.stop - c.start) for p, c in zip(part, cw))
        mask = own[src]
        np.copyto(chunk.values[dst], core[0][src], where=mask)
        np.copyto(chunk.margins[dst], core[1][src], where=mask)
        chunk.written[dst] |= mask

    def _write(self, key: Key, early: bool = False) -> None:
        chunk = self.open.pop(key)
        window, values, margins, z = self.layer.chunk_window(key), chunk.values, chunk.margins, self.plane.z
        if not chunk.merge:
            self.layer.write(z, window, values)
            self.layer.write(z, window, margins, MARGIN)
        else:
            with self.lock(self.layer, window):
                if not chunk.written.all():
                    values = np.where(chunk.written, values, self.layer.read(z, window))
                    margins = np.where(chunk.written, margins, self.layer.read(z, window, MARGIN))
                self.layer.write(z, window, values)
                self.layer.write(z, window, margins, MARGIN)
        if early:  # written before its last tile: the rest of its tiles merge with what is there now
            self.outside.add(key)
        elif self.coarser is not None:
            self.coarser.chunk_final(key, values)

    def durable(self) -> int:
        """Every tile before this index is in the store (the ones after it may be only in memory)."""
        return min((chunk.first for chunk in self.open.values()), default=self.next)

    def batches_stored(self, batch_size: int) -> int:
        """Batches of the plane whose tiles are all in the store (the plane's last batch may be short)."""
        durable = self.durable()
        return -(-durable // batch_size) if durable == len(self.plane.tiles) else durable // batch_size

    def close(self) -> None:
        """Write every chunk still held (after the range's last tile they are none, unless tiles stopped early)."""
        for key in list(self.open):
            self._write(key)
