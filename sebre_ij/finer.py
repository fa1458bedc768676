"""The label layer's levels finer than the inference level: smooth outlines, and cost that follows them.

The pixel rule. A finer pixel's centre lies among four inference pixels' centres, the four of
bilinear interpolation. Each votes for its label with its bilinear weight times its class margin
(the layer's margin array: how far the model's best class led the second there); the label with
the most votes wins, the first of the four on a tie. Where the model's class probabilities change
smoothly, so do the margins, and the outline runs where one label's lead passes to the other's:
a straight boundary stays straight at level 0 instead of becoming a staircase of inference pixels.
A margin not known (0: a pixel no tile wrote, an oracle's labels) counts as the largest of the
four; with none known the pixel takes its nearest inference pixel (pyramid.source_index), the
rule the layer had before margins. At the inference level itself the rule gives its labels back.

The cost follows outlines, not area. A chunk whose inference pixels (with their neighbours) hold
one value is that value throughout and is stored from bytes encoded once per value
(`LabelLayer.write_constant`). Any other chunk is cut into blocks, each tested by its four corners
and split until the test holds; only pixels next to an outline are computed one by one. The test
is exact: between four neighbouring inference centres every label's votes are bilinear in the
position, so a label that beats the others strictly at a block's four corners beats them
everywhere between (a bilinear function lies between its corner values), and the nearest rule is
constant on each quarter of that cell.

Memory: each task holds a band of inference chunk rows (with a halo of a pixel and a chunk) and
one finer chunk at a time, whatever the size of level 0.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .labels import LABEL_DTYPE
from .layer import MARGIN, LabelLayer

FIRST_BLOCK = 64  # side of the blocks a chunk an outline crosses is cut into first
PIXEL_BLOCK = 4  # blocks this small are computed pixel by pixel rather than split again


@dataclass(frozen=True)
class Axis:
    """Along one axis, where the pixels of a finer level (`dst` of them) fall among the inference
    level's (`src`): positions in inference pixels, 0 at the first pixel's centre."""

    src: int
    dst: int

    def position(self, i: np.ndarray) -> np.ndarray:
        return (np.asarray(i, np.float64) + 0.5) * self.src / self.dst - 0.5

    def lower(self, i: np.ndarray) -> np.ndarray:
        """The inference pixel at or before each finer pixel's centre (clipped to the level)."""
        return np.clip(np.floor(self.position(i)), 0, self.src - 1).astype(np.int64)

    def upper(self, i: np.ndarray) -> np.ndarray:
        """The inference pixel after each finer pixel's centre (clipped to the level)."""
        return np.clip(np.floor(self.position(i)) + 1, 0, self.src - 1).astype(np.int64)

    def cell(self, i: np.ndarray) -> np.ndarray:
        """Which gap between inference centres holds each finer pixel's centre (-1: before the first)."""
        return np.floor(self.position(i)).astype(np.int64)

    def weight(self, i: np.ndarray) -> np.ndarray:
        """The bilinear weight of `upper` (that of `lower` is 1 minus it)."""
        p = self.position(i)
        return np.clip(p - np.floor(p), 0.0, 1.0)

    def nearest(self, i: np.ndarray) -> np.ndarray:
        """The inference pixel under each finer pixel's centre: pyramid.source_index's formula."""
        return np.minimum(((np.asarray(i) + 0.5) * self.src / self.dst).astype(np.int64), self.src - 1)


@dataclass
class Band:
    """Inference-level values and margins of a window of rows (all columns), and prefix sums that
    say at once whether any window of them holds one value."""

    values: np.ndarray
    margins: np.ndarray
    row0: int  # the first row's index in the level

    def __post_init__(self):
        v = self.values
        self._across = _prefix(v[:, 1:] != v[:, :-1])  # a value differs from its right neighbour
        self._down = _prefix(v[1:, :] != v[:-1, :])  # ... from the one below

    def one_value(self, r0, r1, c0, c1) -> np.ndarray:
        """Whether the inference pixels [r0, r1] x [c0, c1] (level rows, inclusive; arrays) hold one value."""
        r0, r1 = r0 - self.row0, r1 - self.row0
        return (_window_sum(self._across, r0, r1, c0, c1 - 1) == 0) & (_window_sum(self._down, r0, r1 - 1, c0, c1) == 0)


def _prefix(flags: np.ndarray) -> np.ndarray:
    """2-D prefix sums with a zero row and column in front."""
    out = np.zeros((flags.shape[0] + 1, flags.shape[1] + 1), np.int32)
    np.cumsum(np.cumsum(flags, 0, dtype=np.int32), 1, out=out[1:, 1:])
    return out


def _window_sum(prefix: np.ndarray, r0, r1, c0, c1) -> np.ndarray:
    """Sums of the flags over rows [r0, r1] and columns [c0, c1] (inclusive; empty where r1 < r0 or c1 < c0)."""
    r1, c1 = np.maximum(r1, r0 - 1) + 1, np.maximum(c1, c0 - 1) + 1
    return prefix[r1, c1] - prefix[r0, c1] - prefix[r1, c0] + prefix[r0, c0]


def vote(band: Band, rows: Axis, cols: Axis, ys: np.ndarray, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pixel rule at finer pixels (ys[k], xs[k]): their labels, and whether each label's lead
    over every other label is strict (always so where the nearest rule applies)."""
    y0, y1, ty = rows.lower(ys) - band.row0, rows.upper(ys) - band.row0, rows.weight(ys)
    x0, x1, tx = cols.lower(xs), cols.upper(xs), cols.weight(xs)
    corners = ((y0, x0), (y0, x1), (y1, x0), (y1, x1))
    labels = np.stack([band.values[y, x] for y, x in corners])
    margins = np.stack([band.margins[y, x] for y, x in corners]).astype(np.float64)
    most = margins.max(0)
    margins = np.where(margins > 0, margins, most)
    weights = np.stack([(1 - ty) * (1 - tx), (1 - ty) * tx, ty * (1 - tx), ty * tx])
    votes = weights * margins
    totals = np.stack([(votes * (labels == labels[k])).sum(0) for k in range(4)])
    best = totals.argmax(0)
    label = np.take_along_axis(labels, best[None], 0)[0]
    lead = np.take_along_axis(totals, best[None], 0)[0]
    second = np.where(labels != label, totals, -1.0).max(0)
    nearest = band.values[rows.nearest(ys) - band.row0, cols.nearest(xs)]
    known = most > 0
    return np.where(known, label, nearest), ~known | (lead > second)


def finer_chunk(band: Band, rows: Axis, cols: Axis, window: tuple[slice, slice]) -> np.ndarray | int:
    """A finer level's window (a chunk) by the pixel rule: one int where it holds one value, else its labels."""
    ys, xs = window
    r0, r1 = rows.lower(ys.start), rows.upper(ys.stop - 1)
    c0, c1 = cols.lower(xs.start), cols.upper(xs.stop - 1)
    if band.one_value(r0, r1, c0, c1):
        return int(band.values[r0 - band.row0, c0])
    out = np.empty((ys.stop - ys.start, xs.stop - xs.start), LABEL_DTYPE)
    size = FIRST_BLOCK
    by, bx = (a.ravel() for a in np.meshgrid(np.arange(ys.start, ys.stop, size), np.arange(xs.start, xs.stop, size)))
    while len(by):
        ey, ex = np.minimum(by + size, ys.stop) - 1, np.minimum(bx + size, xs.stop) - 1  # last pixel of each block
        done = band.one_value(rows.lower(by), rows.upper(ey), cols.lower(bx), cols.upper(ex))
        values = band.values[rows.lower(by) - band.row0, cols.lower(bx)]
        one_cell = (rows.cell(by) == rows.cell(ey)) & (cols.cell(bx) == cols.cell(ex)) & ~done
        if one_cell.any():
            at = np.flatnonzero(one_cell)
            cy = np.concatenate([by[at], by[at], ey[at], ey[at]])
            cx = np.concatenate([bx[at], ex[at], bx[at], ex[at]])
            label, strict = (a.reshape(4, -1) for a in vote(band, rows, cols, cy, cx))
            agree = (label == label[0]).all(0) & strict.all(0)
            done[at[agree]], values[at[agree]] = True, label[0][agree]
        for y, x, e, f, v in zip(by[done], bx[done], ey[done], ex[done], values[done]):
            out[y - ys.start : e + 1 - ys.start, x - xs.start : f + 1 - xs.start] = v
        by, bx = by[~done], bx[~done]
        if size <= PIXEL_BLOCK:
            _by_pixel(out, band, rows, cols, window, by, bx, size)
            break
        size //= 2
        by = np.concatenate([by, by, by + size, by + size])
        bx = np.concatenate([bx, bx + size, bx, bx + size])
        keep = (by < ys.stop) & (bx < xs.stop)
        by, bx = by[keep], bx[keep]
    return out


def _by_pixel(out, band: Band, rows: Axis, cols: Axis, window, by, bx, size: int) -> None:
    """Every pixel of the blocks at (by, bx) of side `size` by the pixel rule, into `out`."""
    ys, xs = window
    dy, dx = (a.ravel() for a in np.meshgrid(np.arange(size), np.arange(size), indexing="ij"))
    py, px = (by[:, None] + dy).ravel(), (bx[:, None] + dx).ravel()
    keep = (py < ys.stop) & (px < xs.stop)
    py, px = py[keep], px[keep]
    out[py - ys.start, px - xs.start] = vote(band, rows, cols, py, px)[0]


def _owned_rows(layer: LabelLayer, level: int, band_rows: range) -> range:
    """The chunk rows of a finer level whose first pixel's nearest inference row lies in `band_rows`."""
    (src, _), (dst, _) = layer.slide.yx_shape(layer.level), layer.slide.yx_shape(level)
    step = layer.level_chunks(level)[0]
    firsts = Axis(src, dst).nearest(np.arange(0, dst, step))
    owned = np.flatnonzero((firsts >= band_rows.start) & (firsts < band_rows.stop))
    return range(int(owned[0]), int(owned[-1]) + 1) if len(owned) else range(0)


def _band_task(layer: LabelLayer, z: int, band_row: int) -> dict[int, float]:
    """Every finer chunk whose first row's nearest inference row lies in inference chunk row `band_row`;
    returns the seconds spent per level."""
    (h, w), cy = layer.slide.yx_shape(layer.level), layer.chunks[0]
    band_rows = range(band_row * cy, min((band_row + 1) * cy, h))
    plan = []
    for level in range(layer.level):
        (dh, dw), (fy, fx) = layer.slide.yx_shape(level), layer.level_chunks(level)
        rows, cols = Axis(h, dh), Axis(w, dw)
        for k in _owned_rows(layer, level, band_rows):
            plan.append((level, rows, cols, slice(k * fy, min((k + 1) * fy, dh)), fx, dw))
    seconds: dict[int, float] = {}
    if not plan:
        return seconds
    top = min(int(rows.lower(ys.start)) for _, rows, _, ys, _, _ in plan)
    bottom = max(int(rows.upper(ys.stop - 1)) for _, rows, _, ys, _, _ in plan) + 1
    window = (slice(top, bottom), slice(0, w))
    band = Band(layer.read(z, window), layer.read(z, window, MARGIN), top)
    for level, rows, cols, ys, fx, dw in plan:
        start, path = time.perf_counter(), layer.slide.levels[level].path
        for x in range(0, dw, fx):
            xs = slice(x, min(x + fx, dw))
            ends = [(int(rows.lower(ys.start)), int(rows.upper(ys.stop - 1)))]
            ends.append((int(cols.lower(xs.start)), int(cols.upper(xs.stop - 1))))
            if layer.tiled_chunks is not None and not layer.any_tiled(ends):
                continue  # glass: no tile ran under it, nothing to write
            labels = finer_chunk(band, rows, cols, (ys, xs))
            if isinstance(labels, int):
                layer.write_constant(z, (ys, xs), labels, path)
            else:
                layer.write(z, (ys, xs), labels, path)
        seconds[level] = seconds.get(level, 0.0) + time.perf_counter() - start
    return seconds


def build_finer(layer: LabelLayer, workers: int | None = None) -> dict[int, float]:
    """Write every level finer than the inference level, band by band of inference chunk rows,
    from the inference level's values and margins in the store (so a resumed run, a cluster's
    run and an uninterrupted one give the same bytes). Bands run on `workers` threads (default:
    the cores, at most 4); where no tile ran they are skipped. Returns the seconds spent on each
    level, summed over the threads."""
    seconds: dict[int, float] = {}
    if layer.level == 0:
        return seconds
    h, cy = layer.slide.yx_shape(layer.level)[0], layer.chunks[0]
    bands = range(-(-h // cy))
    if layer.tiled_chunks is not None:  # a band's finer chunks reach a pixel into the bands beside it
        bands = [r for r in bands if layer.tiled_chunks[max(r - 1, 0) : r + 2].any()]
    tasks = [(z, r) for z in range(layer.slide.n_planes) for r in bands]
    with ThreadPoolExecutor(max_workers=workers or min(4, os.cpu_count() or 1)) as pool:
        for done in [pool.submit(_band_task, layer, z, r) for z, r in tasks]:
            for level, spent in done.result().items():
                seconds[level] = seconds.get(level, 0.0) + spent
    return seconds
