"""The label layer's pyramid: every level but the inference level.

Coarser levels: each pixel takes the label of the source pixel under its centre (`source_index`),
nearest neighbour, so no label value is invented. Two paths apply the rule. Beside the model, the
stitcher hands each inference-level chunk to `CoarserLevels` as soon as its values are final, and
it writes the coarser chunks that chunk completes from values still in memory. After the model,
`build_pyramid` fills every chunk it did not write (those over a killed run's chunks, and all of
them in instance mode or on a cluster) with Dask, from the store. Both take each pixel from the
same source pixel, so which path wrote a chunk does not change its bytes. Finer levels, where
users zoom in, follow the model's class margins between inference pixels: finer.py.
"""

from __future__ import annotations

import functools
import itertools
import sys
import time
from collections.abc import Callable, Iterator

import dask
import dask.threaded
import numpy as np

from .finer import build_finer
from .labels import LABEL_DTYPE, label_axes
from .layer import LabelArray, LabelLayer

Block = tuple[slice, ...]  # a window of a label array, one slice per axis
RUN_CHUNKS = 16  # chunks one pyramid task writes at most: one zarr call each way instead of one per chunk


def source_index(block: Block, src_shape: tuple[int, ...], dst_shape: tuple[int, ...]) -> list[np.ndarray]:
    """For each axis, the source pixel under each destination pixel's centre: the pyramid's pixel rule.

    Parameters
    ----------
    block : tuple of slice
        Destination pixels, one slice per axis (steps of 1).
    src_shape, dst_shape : tuple of int
        Shapes of the source and destination levels along the same axes.

    Returns
    -------
    list of numpy.ndarray
        Per axis, one int64 source index per destination pixel of `block`, never decreasing.

    Notes
    -----
    Along an axis of `s` source and `d` destination pixels, destination pixel ``i`` takes source
    pixel ``min(int((i + 0.5) * s / d), s - 1)``, computed in float64. `tiles.resample_nearest`
    repeats this formula for the readers of finished layers; a test holds the two equal.
    """
    return [
        np.minimum(((np.arange(b.start, b.stop) + 0.5) * s / d).astype(np.int64), s - 1)
        for b, s, d in zip(block, src_shape, dst_shape)
    ]


def sampled_from(window: slice, src: int, dst: int) -> tuple[np.ndarray, np.ndarray]:
    """Along one axis, what one source window gives to a finer or a coarser level.

    Parameters
    ----------
    window : slice
        Source pixels (a chunk's, along this axis).
    src, dst : int
        Pixels of the source and destination levels along this axis.

    Returns
    -------
    pixels, sources : numpy.ndarray
        The destination pixels whose source (`source_index`) lies in `window`, in order, and those sources.

    Notes
    -----
    Equals ``(i, source_index((slice(0, dst),), (src,), (dst,))[0][i])`` for ``i`` where that source is
    in `window`, found from an array one pixel wider each way than the window's image.
    """
    lo, hi = max(window.start * dst // src - 1, 0), min(-(-window.stop * dst // src) + 1, dst)
    source = source_index((slice(lo, hi),), (src,), (dst,))[0]
    inside = np.flatnonzero((source >= window.start) & (source < window.stop))
    return lo + inside, source[inside]


def source_ends(block: Block, src_shape: tuple[int, ...], dst_shape: tuple[int, ...]) -> list[tuple[int, int]]:
    """For each axis, the first and last source pixel a block reads.

    Notes
    -----
    Equals ``[(i[0], i[-1]) for i in source_index(block, src_shape, dst_shape)]`` (the index never
    decreases), by the same float64 arithmetic, without an array per block.
    """
    return [
        (min(int((b.start + 0.5) * s / d), s - 1), min(int((b.stop - 1 + 0.5) * s / d), s - 1))
        for b, s, d in zip(block, src_shape, dst_shape)
    ]


class CoarserLevels:
    """A plane's coarser levels made from the inference level's final chunks as the stitcher
    writes them, each coarser chunk written once every chunk under it is final: beside the model,
    from values in memory, instead of read back by build_pyramid afterwards. Each level is sampled
    from the one below it, as build_pyramid does, so the result is the same.

    `written`: the inference chunks the stitcher will write final. `kept`: chunks that hold labels
    it will not write (a killed run's); coarser chunks over those are left to build_pyramid.
    Memory: the coarser chunks with some but not all of their chunks final, about a row per level."""

    def __init__(self, layer: LabelLayer, z: int, written: set[tuple[int, int]], kept: set[tuple[int, int]]):
        self.layer, self.z = layer, z
        self.feeds: dict[tuple[int, tuple[int, int]], list[tuple[int, int]]] = {}  # (level, chunk) -> chunks above it
        self.waiting: dict[tuple[int, tuple[int, int]], int] = {}  # (level, chunk) -> chunks under it still to come
        self.open: dict[tuple[int, tuple[int, int]], np.ndarray] = {}
        for level in range(layer.level + 1, len(layer.slide.levels)):
            above_written, above_kept = set(), set()
            for key in written | kept:
                for above in self._above(level, key):
                    (above_kept if key in kept else above_written).add(above)
                    if key in written:
                        self.feeds.setdefault((level - 1, key), []).append(above)
                        self.waiting[(level, above)] = self.waiting.get((level, above), 0) + 1
            for above in above_kept:
                self.waiting.pop((level, above), None)
            written, kept = above_written - above_kept, above_kept

    def _sampled(self, level: int, axis: int, window: slice) -> tuple[np.ndarray, np.ndarray]:
        """Pixels of `level` along an axis sampled from `window` of the level below, and their sources."""
        return sampled_from(window, self.layer.slide.yx_shape(level - 1)[axis], self.layer.slide.yx_shape(level)[axis])

    def _above(self, level: int, key: tuple[int, int]) -> set[tuple[int, int]]:
        """Chunks of `level` with pixels sampled from chunk `key` of the level below."""
        spans = []
        for axis, (w, c) in enumerate(zip(self.layer.level_window(level - 1, key), self.layer.level_chunks(level))):
            pixels = self._sampled(level, axis, w)[0]
            spans.append(range(int(pixels[0]) // c, int(pixels[-1]) // c + 1) if len(pixels) else range(0))
        return {(r, c) for r in spans[0] for c in spans[1]}

    def chunk_final(self, key: tuple[int, int], values: np.ndarray) -> None:
        """Inference-level chunk `key` of the plane holds its final `values`: pass them up the levels."""
        self._level_final(self.layer.level, key, values)

    def _level_final(self, level: int, key: tuple[int, int], values: np.ndarray) -> None:
        """Chunk `key` of `level` holds its final `values`: sample them into the chunks above, and
        write (and pass up) each chunk above that has all it waits for."""
        window = self.layer.level_window(level, key)
        for above in self.feeds.get((level, key), ()):
            if (level + 1, above) not in self.waiting:
                continue
            target = self.layer.level_window(level + 1, above)
            buffer = self.open.get((level + 1, above))
            if buffer is None:
                buffer = self.open[(level + 1, above)] = np.zeros([s.stop - s.start for s in target], LABEL_DTYPE)
            part = []
            for axis, (w, t) in enumerate(zip(window, target)):
                pixels, source = self._sampled(level + 1, axis, w)
                keep = (pixels >= t.start) & (pixels < t.stop)
                part.append(
                    (slice(int(pixels[keep][0]) - t.start, int(pixels[keep][-1]) + 1 - t.start), source[keep] - w.start)
                )
            buffer[part[0][0], part[1][0]] = values.take(part[0][1], 0).take(part[1][1], 1)
            self.waiting[(level + 1, above)] -= 1
            if not self.waiting[(level + 1, above)]:
                del self.waiting[(level + 1, above)]
                del self.open[(level + 1, above)]
                self.layer.write(self.z, target, buffer, self.layer.slide.levels[level + 1].path)
                self.layer.coarser_done.add((level + 1, self.z, *above))
                self._level_final(level + 1, above, buffer)


def _write_block(src: LabelArray, dst: LabelArray, block: Block) -> None:
    """One destination chunk (or run of chunks) from the source level, by `source_index`."""
    index = source_index(block, src.shape, dst.shape)
    window = tuple(slice(int(i.min()), int(i.max()) + 1) for i in index)
    values = src[window]
    for axis, (i, w) in enumerate(zip(index, window)):  # one axis at a time: numpy's take is faster than np.ix_
        values = values.take(i - w.start, axis)
    dst[block] = values


def _blocks(array: LabelArray) -> Iterator[Block]:
    """Every chunk of an array as a tuple of slices."""
    ranges = [[slice(a, min(a + c, n)) for a in range(0, n, c)] for n, c in zip(array.shape, array.chunks)]
    return itertools.product(*ranges)


def _tiled_blocks(layer: LabelLayer, dst: LabelArray) -> Iterator[Block]:
    """The chunks of `dst` over the inference-level chunks where tiles ran, found from those chunks
    (not by visiting every chunk of the level, which on a mostly-glass slide costs time per glass)."""
    (h, w), (cy, cx) = layer.slide.yx_shape(layer.level), layer.chunks
    (dh, dw), (dy, dx) = dst.shape[-2:], dst.chunks[-2:]
    wanted = set()
    for iy, ix in zip(*np.nonzero(layer.tiled_chunks)):
        rows = range(iy * cy * dh // h // dy, -(-min((iy + 1) * cy, h) * dh // h) // dy + 1)
        cols = range(ix * cx * dw // w // dx, -(-min((ix + 1) * cx, w) * dw // w) // dx + 1)
        wanted.update((r, c) for r in rows if r * dy < dh for c in cols if c * dx < dw)
    lead = [[slice(a, min(a + c, n)) for a in range(0, n, c)] for n, c in zip(dst.shape[:-2], dst.chunks[:-2])]
    for r, c in sorted(wanted):
        yx = (slice(r * dy, min((r + 1) * dy, dh)), slice(c * dx, min((c + 1) * dx, dw)))
        for front in itertools.product(*lead):
            yield (*front, *yx)


def build_pyramid(layer: LabelLayer, client=None) -> dict[int, float]:
    """Fill every other level: the finer ones by finer.build_finer (on the workers of a Dask
    `client`, if given), the coarser ones chunk by chunk
    with Dask, label-safe, each from the one above it, so a task reads about four chunks whatever
    the level (a coarse chunk read straight from the inference level can span gigabytes).

    Only chunks over the tiles that ran are computed (`layer.tiled_chunks`): on a slide that is
    mostly glass, time follows tissue, and the glass chunks are never visited nor written. Coarser
    chunks that CoarserLevels wrote in this process are left as they are. Returns the seconds spent
    on each level (the finer levels' summed over their threads or workers)."""
    seconds = build_finer(layer, client)
    inference = layer.array(layer.level)
    for i in range(layer.level + 1, len(layer.slide.levels)):  # in order: each needs the one before it complete
        start, dst = time.perf_counter(), layer.array(i)
        src = layer.array(i - 1)
        if layer.tiled_chunks is None:
            blocks = _blocks(dst)
        else:
            blocks = (
                b
                for b in _tiled_blocks(layer, dst)
                if layer.any_tiled(source_ends(b[-2:], inference.shape[-2:], dst.shape[-2:]))
            )
        # plane by plane, row by row: neighbours in a row meet (_row_runs)
        blocks = sorted(blocks, key=lambda b: [s.start for s in b])
        if layer.coarser_done:
            blocks = [b for b in blocks if not _coarser_by_stitcher(layer, i, b, dst)]
        # a partial: Dask does not walk the zarr arrays' fields
        write = dask.delayed(functools.partial(_write_block, src, dst))
        dask.compute(*[write(run) for run in _row_runs(blocks)], scheduler=_scheduler())
        seconds[i] = time.perf_counter() - start
    return seconds


def _coarser_by_stitcher(layer: LabelLayer, level: int, block: Block, dst: LabelArray) -> bool:
    """Is a coarser level's chunk written already, for every plane it holds (CoarserLevels)?"""
    cy, cx = dst.chunks[-2:]
    return all(
        (level, z, block[-2].start // cy, block[-1].start // cx) in layer.coarser_done for z in _planes(layer, block)
    )


def _planes(layer: LabelLayer, block: Block) -> range:
    """The planes a block of a label array holds (plane 0 alone without a z axis)."""
    axes = label_axes(layer.slide)
    planes = block[axes.index("z")] if "z" in axes else slice(0, 1)
    return range(planes.start, planes.stop)


def _scheduler() -> Callable | None:
    """Dask's default (the cluster's workers under `sebre segment --scheduler` and the like) once
    distributed is loaded; else Dask's threads, passed as a function: given a name, or left to
    choose, Dask imports distributed only to look for a client."""
    return None if "distributed" in sys.modules else dask.threaded.get


def _row_runs(blocks: list[Block]) -> Iterator[Block]:
    """Chunks side by side in one chunk row, merged into windows of up to RUN_CHUNKS chunks."""
    run, count = None, 0
    for block in blocks:
        if run is not None and count < RUN_CHUNKS and block[:-1] == run[:-1] and block[-1].start == run[-1].stop:
            run, count = (*run[:-1], slice(run[-1].start, block[-1].stop)), count + 1
            continue
        if run is not None:
            yield run
        run, count = block, 1
    if run is not None:
        yield run
