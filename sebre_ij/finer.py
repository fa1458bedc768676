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

The cost follows outlines, not area. Whether a chunk's inference pixels (with their neighbours)
hold one value is found for a whole row of chunks at once (prefix sums); such a chunk is that
value throughout and is stored from bytes encoded once per value (`ChunkFiles.write_constant`),
or, the fill value, left out. The other chunks of a row are computed together as runs along
their rows: a cell (the square between four inference centres) of one label is one run per row;
in a cell of two labels each label's votes are linear along a finer row (bilinear in the
position), so the row is one run of each, split where the votes cross, found in closed form and
checked at the pixels beside the split; then one np.repeat makes the chunks' labels. Only rows of
cells of three or four labels, and pixels within rounding of a tie, are computed pixel by pixel
(`vote`), as are cells only a few pixels wide (the levels just finer than the inference level).

Memory: a band of inference chunk rows (with a halo of a pixel and a chunk; only the columns under
its tiles, on a sparse slide) and a row's outline chunks (OUTLINE_PIXELS) per thread or worker,
whatever the size of level 0.
"""

from __future__ import annotations

import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .chunkfiles import ChunkFiles
from .labels import LABEL_DTYPE, label_axes
from .layer import MARGIN, LabelLayer

PIXELWISE = 8  # cost of a pixel by `vote` against a run's: cells of fewer pixels go by pixel (_by_pixel)
OUTLINE_PIXELS = 1 << 22  # outline chunks of a row computed together, up to this many pixels (16 MB of labels)


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
    col0: int = 0  # the first column's

    def __post_init__(self):
        v = self.values
        self._across = _prefix(v[:, 1:] != v[:, :-1])  # a value differs from its right neighbour
        self._down = _prefix(v[1:, :] != v[:-1, :])  # ... from the one below

    def one_value(self, r0, r1, c0, c1) -> np.ndarray:
        """Whether the inference pixels [r0, r1] x [c0, c1] (level rows, inclusive; arrays) hold one value."""
        r0, r1, c0, c1 = r0 - self.row0, r1 - self.row0, c0 - self.col0, c1 - self.col0
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
    x0, x1, tx = cols.lower(xs) - band.col0, cols.upper(xs) - band.col0, cols.weight(xs)
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
    nearest = band.values[rows.nearest(ys) - band.row0, cols.nearest(xs) - band.col0]
    known = most > 0
    return np.where(known, label, nearest), ~known | (lead > second)


@dataclass
class Runs:
    """Pixels of a finer level along one axis (`index`: increasing) as runs between the same two
    inference centres (a cell), cut where asked (where a window ends): each run's first
    pixel (in `index`), length, lower and upper inference pixel, and how many of its pixels, the
    first ones, have the lower one nearest; and each pixel's bilinear weight of the upper one."""

    index: np.ndarray
    start: np.ndarray
    length: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    near_lower: np.ndarray
    weight: np.ndarray

    @classmethod
    def of(cls, axis: Axis, index: np.ndarray, cuts: np.ndarray | None = None) -> Runs:
        """The runs of pixels `index`, cut also before each of `cuts` (positions in `index`)."""
        position = axis.position(index)
        cell = np.floor(position).astype(np.int64)
        new = np.r_[True, cell[1:] != cell[:-1]]
        if cuts is not None:
            new[cuts[cuts < len(index)]] = True
        start = np.flatnonzero(new)
        length = np.diff(np.r_[start, len(index)])
        lower, upper = np.clip(cell[start], 0, axis.src - 1), np.clip(cell[start] + 1, 0, axis.src - 1)
        near_lower = np.add.reduceat(axis.nearest(index) == np.repeat(lower, length), start).astype(np.int64)
        return cls(index, start, length, lower, upper, near_lower, np.clip(position - cell, 0.0, 1.0))


def outline_labels(
    band: Band, rows: Axis, cols: Axis, ys: slice, windows: list[slice]
) -> tuple[list[np.ndarray], np.ndarray]:
    """Labels by the pixel rule at rows `ys` of a finer level in column `windows` (in order, apart:
    a row's chunks), each a C-ordered array, and whether each holds one value. The windows are done
    together, a numpy call for all rather than one per window.

    A cell whose four inference pixels hold one label is that label throughout. Where cells are a
    few pixels wide (PIXELWISE), the windows are their cells' labels repeated, and the other cells'
    pixels are set by `vote`. Else each finer row is a run per side of each cell's split: along a
    row each label's votes are linear in the position, so with two labels in a cell the row is a
    run of each, split where their votes cross (found in closed form, then checked at the pixels
    beside it; one label: an empty run), and one np.repeat makes all the windows. Rows of cells
    with three or four labels, and rows with a pixel within rounding of a tie, get `vote`."""
    widths = np.array([w.stop - w.start for w in windows])
    xs = np.concatenate([np.arange(w.start, w.stop) for w in windows])
    y, x = Runs.of(rows, np.arange(ys.start, ys.stop)), Runs.of(cols, xs, np.cumsum(widths))
    v, row0, col0 = band.values, band.row0, band.col0
    cell_labels = [v[a[:, None] - row0, b - col0] for a in (y.lower, y.upper) for b in (x.lower, x.upper)]
    first = cell_labels[0]
    uniform = (first == cell_labels[1]) & (first == cell_labels[2]) & (first == cell_labels[3])
    run0 = np.searchsorted(x.start, np.cumsum(widths) - widths)  # each window's first run
    bounds = list(zip(run0, np.r_[run0[1:], len(x.start)]))
    top = np.iinfo(LABEL_DTYPE).max  # one value in a window: its uniform cells' and other pixels' agree
    lo = np.minimum.reduceat(np.where(uniform, first, top).min(0), run0)
    hi = np.maximum.reduceat(np.where(uniform, first, 0).max(0), run0)
    ci, j = np.nonzero(~uniform)
    if PIXELWISE * y.length[ci] @ x.length[j] < (ys.stop - ys.start) * len(x.start):  # cells of few pixels
        parts = [np.repeat(np.repeat(first[:, a:b], x.length[a:b], 1), y.length, 0) for a, b in bounds]
        size = y.length[ci] * x.length[j]
        k = np.arange(size.sum()) - np.repeat(np.cumsum(size) - size, size)  # pixel of its cell, row-major
        py = np.repeat(y.start[ci], size) + k // np.repeat(x.length[j], size)
        px = np.repeat(x.start[j], size) + k % np.repeat(x.length[j], size)
        _put(parts, windows, x, run0, lo, hi, py, px, vote(band, rows, cols, py + ys.start, x.index[px])[0])
        return parts, lo == hi
    left = np.repeat(first, y.length, 0)  # every row of a cell: a run of each side of its split
    right, split = left.copy(), np.broadcast_to(x.length, left.shape).copy()
    r, j = _rows_of(y, ci), np.repeat(j, y.length[ci])
    pair = _split_rows(band, rows, cols, ys, x, r, j)
    left[r, j], right[r, j], split[r, j] = pair[:3]
    for value, empty in ((pair[0], pair[2] == 0), (pair[1], pair[2] == x.length[j])):
        keep = ~empty & ~pair[3]  # the rows `vote` does are counted by _put
        np.minimum.at(lo, np.searchsorted(run0, j[keep], side="right") - 1, value[keep])
        np.maximum.at(hi, np.searchsorted(run0, j[keep], side="right") - 1, value[keep])
    # each window's runs, row after row, so that its labels come out of np.repeat as a C-ordered block
    vals, lens = np.stack([left, right], -1), np.stack([split, x.length - split], -1)
    out = np.repeat(*(np.concatenate([t[:, a:b].ravel() for a, b in bounds]) for t in (vals, lens)))
    ends = np.r_[0, np.cumsum(widths * len(y.weight))]
    parts = [out[a:b].reshape(-1, w) for a, b, w in zip(ends[:-1], ends[1:], widths)]
    if pair[3].any():
        r, j = r[pair[3]], j[pair[3]]
        n = x.length[j]
        py, px = np.repeat(r, n), np.repeat(x.start[j], n) + np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
        _put(parts, windows, x, run0, lo, hi, py, px, vote(band, rows, cols, py + ys.start, x.index[px])[0])
    return parts, lo == hi


def _put(parts, windows, x: Runs, run0, lo, hi, py, px, labels) -> None:
    """Set pixels (row, position in x.index) of the windows to `labels`; widen each window's range of values."""
    g = np.searchsorted(run0, np.searchsorted(x.start, px, side="right") - 1, side="right") - 1  # window of each
    np.minimum.at(lo, g, labels)
    np.maximum.at(hi, g, labels)
    order = np.argsort(g, kind="stable")
    at = np.searchsorted(g[order], np.arange(len(windows) + 1))
    for w, (a, b) in enumerate(zip(at[:-1], at[1:])):
        sel = order[a:b]
        parts[w][py[sel], x.index[px[sel]] - windows[w].start] = labels[sel]


def _split_rows(band: Band, rows: Axis, cols: Axis, ys: slice, x: Runs, r, j):
    """For rows `r` (from ys.start) of cells (at run `j` of `x`) whose four inference
    pixels differ: the label before the split, after it, the split (pixels before it in the run),
    and whether the row needs `vote` pixel by pixel (three labels or more, or a tie)."""
    v, m, row0 = band.values, band.margins, band.row0
    ylo, yhi = rows.lower(r + ys.start) - row0, rows.upper(r + ys.start) - row0
    xlo, xhi = x.lower[j] - band.col0, x.upper[j] - band.col0
    labels = [v[a, b] for a in (ylo, yhi) for b in (xlo, xhi)]
    margins = np.stack([m[a, b] for a in (ylo, yhi) for b in (xlo, xhi)]).astype(np.float64)
    most = margins.max(0)
    margins = np.where(margins > 0, margins, most)
    first = labels[0]
    other = np.where(labels[1] != first, labels[1], np.where(labels[2] != first, labels[2], labels[3]))
    many = np.zeros(first.shape, bool)
    for lab in labels[1:]:
        many |= (lab != first) & (lab != other)  # a third label in the cell
    d = [np.where(lab == first, mg, -mg) for lab, mg in zip(labels, margins)]  # votes of `first` less `other`'s
    ty = rows.weight(r + ys.start)
    p = (1 - ty) * d[0] + ty * d[2]  # the difference at the cell's left edge (weight 0)...
    q = (1 - ty) * (d[1] - d[0]) + ty * (d[3] - d[2])  # ... and its slope along the row
    sign, n = np.where(q < 0, -1.0, 1.0), x.length[j]
    with np.errstate(divide="ignore", invalid="ignore"):
        split = np.ceil((-p / q - x.weight[x.start[j]]) * cols.dst / cols.src)
    split = np.clip(np.nan_to_num(split, nan=0.0, posinf=float(n.max(initial=0)), neginf=0.0), 0, n).astype(np.int64)
    split = np.where(q == 0, np.where(p < 0, n, 0), split)  # no slope: one side throughout
    last = len(x.weight) - 1

    def f(at):  # the difference at pixel `at` of the run, signed to rise along the row
        return sign * (p + q * x.weight[np.clip(x.start[j] + at, 0, last)])

    for _ in range(3):
        back = (split > 0) & (f(split - 1) >= 0)
        split -= back
        on = (split < n) & (f(split) < 0)
        split += on
        if not (back.any() or on.any()):
            break
    tol = 1e-9 * margins.sum(0)
    tie = back | on | ((split > 0) & (np.abs(f(split - 1)) <= tol)) | ((split < n) & (np.abs(f(split)) <= tol))
    known = most > 0
    near = rows.nearest(r + ys.start) - row0  # the nearest rule, where no margin is known
    left = np.where(known, np.where(q < 0, first, other), v[near, xlo])  # where f < 0 ...
    right = np.where(known, np.where(q < 0, other, first), v[near, xhi])  # ... and f >= 0
    return left, right, np.where(known, split, x.near_lower[j]), known & (many | tie)


def _rows_of(y: Runs, cells: np.ndarray) -> np.ndarray:
    """The rows (from the window's first) of each of `cells` (runs of y), one after the other."""
    count = y.length[cells]
    return np.repeat(y.start[cells], count) + np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)


def finer_chunk(band: Band, rows: Axis, cols: Axis, window: tuple[slice, slice]) -> np.ndarray | int:
    """A finer level's window (a chunk) by the pixel rule: one int where it holds one value, else its labels."""
    ys, xs = window
    r0, r1 = rows.lower(ys.start), rows.upper(ys.stop - 1)
    c0, c1 = cols.lower(xs.start), cols.upper(xs.stop - 1)
    if band.one_value(r0, r1, c0, c1):
        return int(band.values[r0 - band.row0, c0 - band.col0])
    return outline_labels(band, rows, cols, ys, [xs])[0][0]


def _owned_rows(layer: LabelLayer, level: int, band_rows: range) -> range:
    """The chunk rows of a finer level whose first pixel's nearest inference row lies in `band_rows`."""
    (src, _), (dst, _) = layer.slide.yx_shape(layer.level), layer.slide.yx_shape(level)
    step = layer.level_chunks(level)[0]
    firsts = Axis(src, dst).nearest(np.arange(0, dst, step))
    owned = np.flatnonzero((firsts >= band_rows.start) & (firsts < band_rows.stop))
    return range(int(owned[0]), int(owned[-1]) + 1) if len(owned) else range(0)


def _band(layer: LabelLayer, z: int, band_row: int) -> tuple[Band | None, list[tuple]]:
    """The inference level's values and margins that the finer chunk rows owned by inference chunk
    row `band_row` (their first row's nearest inference row lies in it) are drawn from, and those
    rows: (level, rows, columns, finer rows) each."""
    (h, w), cy = layer.slide.yx_shape(layer.level), layer.chunks[0]
    band_rows = range(band_row * cy, min((band_row + 1) * cy, h))
    plan = []
    for level in range(layer.level):
        (dh, dw), fy = layer.slide.yx_shape(level), layer.level_chunks(level)[0]
        rows, cols = Axis(h, dh), Axis(w, dw)
        owned = _owned_rows(layer, level, band_rows)
        plan += [(level, rows, cols, slice(k * fy, min((k + 1) * fy, dh))) for k in owned]
    if not plan:
        return None, plan
    top = min(int(rows.lower(ys.start)) for _, rows, _, ys in plan)
    bottom = max(int(rows.upper(ys.stop - 1)) for _, rows, _, ys in plan) + 1
    left, right = 0, w
    if layer.tiled_chunks is not None:  # the columns under the tiles of these rows, and a finer chunk's width beside
        cy, cx = layer.chunks
        tiled = np.flatnonzero(layer.tiled_chunks[top // cy : (bottom - 1) // cy + 1].any(0))
        halo = max(-(-layer.level_chunks(level)[1] * w // layer.slide.yx_shape(level)[1]) for level, *_ in plan) + 1
        if len(tiled):
            left, right = max(int(tiled[0]) * cx - halo, 0), min((int(tiled[-1]) + 1) * cx + halo, w)
    window = (slice(top, bottom), slice(left, right))
    return Band(layer.read(z, window), layer.read(z, window, MARGIN), top, left), plan


def _timed_row(layer: LabelLayer, z: int, band: Band, level: int, rows: Axis, cols: Axis, ys: slice):
    """_chunk_row, and the level and seconds it took."""
    start = time.perf_counter()
    _chunk_row(layer, z, band, level, rows, cols, ys)
    return level, time.perf_counter() - start


@dataclass(frozen=True)
class FinerJob:
    """What a cluster's worker needs to write a band's finer chunks: the slide, the layer, its
    inference level and the chunks tiles ran under."""

    slide_url: str
    labels: str
    level: int
    tiled_chunks: np.ndarray | None


def band_task(job: FinerJob, z: int, band_row: int) -> dict[int, float]:
    """On a cluster's worker: every finer chunk row owned by inference chunk row `band_row` of
    plane z (`_band`), written in turn; returns the seconds spent per level."""
    from .layer import reopen_layer
    from .slide import open_slide

    layer = reopen_layer(open_slide(job.slide_url), job.labels, job.level)
    layer.tiled_chunks = job.tiled_chunks
    band, plan = _band(layer, z, band_row)
    seconds: dict[int, float] = {}
    for level, spent in (_timed_row(layer, z, band, *row) for row in plan):
        seconds[level] = seconds.get(level, 0.0) + spent
    return seconds


def _chunk_row(layer: LabelLayer, z: int, band: Band, level: int, rows: Axis, cols: Axis, ys: slice) -> None:
    """Write a row of a finer level's chunks: which of them hold one value, and which lie over no
    tile (glass: nothing to write), is found for the whole row at once; then only the chunks that
    are not the fill value throughout are visited, one by one."""
    fx, dw = layer.level_chunks(level)[1], cols.dst
    x0 = np.arange(0, dw, fx)
    x1 = np.minimum(x0 + fx, dw)
    r0, r1 = int(rows.lower(ys.start)), int(rows.upper(ys.stop - 1))
    c0, c1 = cols.lower(x0), cols.upper(x1 - 1)
    inside = (c0 >= band.col0) & (c1 < band.col0 + band.values.shape[1])  # the rest lies over no tile
    c0, c1 = (np.clip(c, band.col0, band.col0 + band.values.shape[1] - 1) for c in (c0, c1))
    one = band.one_value(r0, r1, c0, c1)
    value = band.values[r0 - band.row0, c0 - band.col0]
    array = layer.array(level)
    files = isinstance(array, ChunkFiles) and all(c == 1 for c in array.chunks[:-2])
    visit = inside.copy()
    if layer.tiled_chunks is not None:  # glass: no tile ran under it, nothing to write
        cy, cx = layer.chunks
        tiled = np.r_[0, np.cumsum(layer.tiled_chunks[r0 // cy : r1 // cy + 1].any(0))]
        visit &= tiled[c1 // cx + 1] > tiled[c0 // cx]
    fill = one & (value == array.fill) if files else np.zeros(len(x0), bool)  # zarr removes fill chunks itself
    todo = visit & ~fill
    lead = tuple(z if a == "z" else 0 for a in label_axes(layer.slide)[:-2])
    row, path = ys.start // layer.level_chunks(level)[0], layer.slide.levels[level].path
    if files:  # chunks of the fill value from an earlier try of this layer (if any) go
        for c in np.flatnonzero(visit & fill):
            array.clear((*lead, row, int(c)))
    for c in np.flatnonzero(todo & one):
        if files:
            array.write_constant((*lead, row, int(c)), int(value[c]))
        else:
            layer.write_constant(z, (ys, slice(int(x0[c]), int(x1[c]))), int(value[c]), path)
    outline = np.flatnonzero(todo & ~one)
    per_call = max(1, OUTLINE_PIXELS // ((ys.stop - ys.start) * fx))
    for group in np.split(outline, np.arange(per_call, len(outline), per_call)) if len(outline) else []:
        windows = [slice(int(x0[c]), int(x1[c])) for c in group]
        parts, single = outline_labels(band, rows, cols, ys, windows)
        for c, xs, labels, alone in zip(group, windows, parts, single):
            whole = files and labels.shape == array.chunks[-2:]
            if whole and alone:  # the votes kept one label throughout after all
                array.write_constant((*lead, row, int(c)), int(labels[0, 0]))
            elif whole:
                array.write_chunk((*lead, row, int(c)), labels, check=False)
            else:
                layer.write(z, (ys, xs), labels, path)


def build_finer(layer: LabelLayer, client=None, workers: int | None = None) -> dict[int, float]:
    """Write every level finer than the inference level from the inference level's values and
    margins in the store (so a resumed run, a cluster's run and an uninterrupted one give the same
    bytes), band by band of inference chunk rows; bands where no tile ran are skipped. With a
    Dask `client`, each band is a task on the cluster's workers (`band_task`); in this process,
    each band is read here and its finer chunk rows are written on `workers` threads (default:
    half the cores, 4 at most: the work is many small numpy calls, and more threads than that
    spend more time waiting for the GIL than they save), two bands in memory at most. Returns
    the seconds spent on each level, summed over threads and workers."""
    seconds: dict[int, float] = {}
    if layer.level == 0:
        return seconds
    h, cy = layer.slide.yx_shape(layer.level)[0], layer.chunks[0]
    bands = range(-(-h // cy))
    if layer.tiled_chunks is not None:  # a band's finer chunks reach a pixel into the bands beside it
        bands = [r for r in bands if layer.tiled_chunks[max(r - 1, 0) : r + 2].any()]
    tasks = [(z, r) for z in range(layer.slide.n_planes) for r in bands]
    if client is not None:
        job = client.scatter(FinerJob(layer.slide.url, layer.name, layer.level, layer.tiled_chunks), broadcast=True)
        for done in client.gather([client.submit(band_task, job, z, r, pure=False) for z, r in tasks]):
            for level, spent in done.items():
                seconds[level] = seconds.get(level, 0.0) + spent
        return seconds
    with ThreadPoolExecutor(max_workers=workers or max(1, min(4, (os.cpu_count() or 2) // 2))) as pool:
        pending: deque[list[Future]] = deque()
        for z, r in tasks:
            band, plan = _band(layer, z, r)
            pending.append([pool.submit(_timed_row, layer, z, band, *row) for row in plan])
            while len(pending) > 1 or (pending and (z, r) == tasks[-1]):  # the band before is done first
                for done in pending.popleft():
                    level, spent = done.result()
                    seconds[level] = seconds.get(level, 0.0) + spent
    return seconds
