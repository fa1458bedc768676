"""The NGFF label layer: `labels/<name>/` in the slide's own store, one level per image level.

Label values encode the section and the class (value = section * base + class, base a power of
ten above the class count: 305 is section 3, class 5), so a value can be computed from any tile
alone and every writer agrees on it. The layer's name enters the labels group's list last, after its
multiscales and image-label metadata: readers go by that list, so a layer not in it is an unfinished
run (resumable), never mistaken for a result. A run holds a lock file beside its layer
(labels/.sebre-lock-<name>), and the list itself is edited under labels/.sebre-lock, so runs on other
names in the same store never lose each other's entry.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dask
import dask.threaded
import numpy as np
import zarr
from ome_zarr.writer import add_metadata, write_multiscales_metadata

from .chunkfiles import ChunkFiles, chunk_files
from .errors import UserError
from .instances import SCRATCH
from .lock import locked
from .ngff import ome_attrs
from .slide import Slide, node, read_levels, read_multiscale

LABEL_DTYPE = np.uint32
LabelArray = zarr.Array | ChunkFiles  # a level of the layer, as written
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def class_base(n_classes: int) -> int:
    """Smallest power of ten above the largest class index."""
    return 10 ** len(str(max(n_classes - 1, 1)))


def encode(sections: np.ndarray, classes: np.ndarray, base: int) -> np.ndarray:
    """Label values from per-pixel section and class; 0 where either is background."""
    values = sections.astype(LABEL_DTYPE) * base + classes.astype(LABEL_DTYPE)
    return np.where((sections > 0) & (classes > 0), values, 0).astype(LABEL_DTYPE)


def label_axes(slide: Slide) -> str:
    """Labels carry the image's axes but the channel."""
    return slide.axes.replace("c", "")


def _drop_channel(slide: Slide, values: tuple) -> tuple:
    return tuple(v for a, v in zip(slide.axes, values) if a != "c")


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise UserError(f"label name {name!r} is not a valid path segment; use letters, digits, '.', '_' or '-' (for example 'sebre')")
    return name


LOCK = ".sebre-lock"  # lock files start with ".", which layer names cannot: the two never collide


def _local_labels(slide: Slide) -> Path | None:
    """The labels folder of a store on this machine's filesystem; None for a remote (fsspec) store."""
    return None if "://" in slide.url else Path(slide.url) / "labels"


def check_writable(slide: Slide, name: str) -> None:
    """Refuse a read-only store before any work, rather than fail at the first write."""
    folder = _local_labels(slide)
    if folder is None:
        return
    for path in (folder.parent, folder, folder / name):
        if path.exists() and not os.access(path, os.W_OK):
            raise UserError(f"{slide.url}: the store is read-only ({path} is not writable) and labels are written inside it; "
                            "copy the slide somewhere writable, or ask for write access")


@contextlib.contextmanager
def hold_layer(slide: Slide, name: str) -> Iterator[None]:
    """Hold labels/<name> for this run: a second run on the name is refused while this one lives.
    Remote stores cannot be locked; runs there must not share a name."""
    folder = _local_labels(slide)
    if folder is None:
        yield
        return
    made = not folder.exists()
    folder.mkdir(exist_ok=True)
    try:
        with locked(folder / f"{LOCK}-{check_name(name)}"):
            yield
    finally:
        if made:
            with contextlib.suppress(OSError):
                folder.rmdir()  # a refused run leaves no empty labels folder (rmdir removes only an empty one)


@contextlib.contextmanager
def _label_list(slide: Slide, store) -> Iterator[zarr.Group]:
    """The labels group, freshly read, for editing under the store's list lock (waited for: edits are short)."""
    folder = _local_labels(slide)
    if folder is not None:
        folder.mkdir(exist_ok=True)
    with locked(folder / LOCK, wait=60) if folder is not None else contextlib.nullcontext():
        yield zarr.open_group(store, mode="r+").require_group("labels")


def _edit_list(slide: Slide, store, change: Callable[[list[str]], list[str]]) -> None:
    """Replace the labels group's list of layer names by `change(names)`, under the list lock."""
    with _label_list(slide, store) as labels:
        attrs = ome_attrs(labels)
        attrs["labels"] = change(list(attrs.get("labels", [])))
        slide.ngff.set_attrs(labels, slide.ngff.labels_attrs(attrs))


def open_writable(slide: Slide) -> zarr.Group:
    """The slide's root group opened for writing; the image arrays themselves are never written."""
    url = str(slide.url)
    # fsspec's local file system makes no folders for new arrays; zarr's own local store does
    url = url[len("file://"):] if url.startswith("file://") else url
    try:
        return zarr.open_group(url, mode="r+")
    except Exception as exc:
        raise UserError(f"{slide.url}: the store cannot be opened for writing ({exc}); check permissions or copy the slide somewhere writable") from exc


@dataclass
class LabelLayer:
    """An open, unfinished label layer being filled at one inference level."""

    slide: Slide
    name: str
    group: zarr.Group
    level: int
    progress: dict = field(default_factory=dict)  # {"key": run key, "done": {plane: batches}, "stats": {...}}
    ran: np.ndarray | None = None  # per inference-level chunk (y, x): did a tile's core cover it? None: all
    # arrays by path (opening one reads its metadata), as chunk files where they can be (chunkfiles.py)
    opened: dict[str, LabelArray] = field(default_factory=dict, repr=False)
    # (plane, row, column) of the inference-level chunks whose finer levels this process has written
    finer_done: set[tuple[int, int, int]] = field(default_factory=set, repr=False)
    # (level, plane, row, column) of the coarser levels' chunks this process has written (CoarserLevels)
    coarser_done: set[tuple[int, int, int, int]] = field(default_factory=set, repr=False)

    @functools.cached_property
    def chunks(self) -> tuple[int, int]:
        """(y, x) chunk shape of the inference level (asked per pyramid chunk: not read from the store each time)."""
        return self.array(self.level).chunks[-2:]

    def chunk_window(self, key: tuple[int, int]) -> tuple[slice, slice]:
        """The window of the inference level's chunk (row, column)."""
        return self.level_window(self.level, key)

    def chunks_under(self, window: tuple[slice, slice]) -> list[tuple[int, int]]:
        """(row, column) of the inference level's chunks that a window touches."""
        (ys, xs), (cy, cx) = window, self.chunks
        return [(r, c) for r in range(ys.start // cy, (ys.stop - 1) // cy + 1) for c in range(xs.start // cx, (xs.stop - 1) // cx + 1)]

    def mark_ran(self, core: tuple[slice, slice]) -> None:
        """Note a tile's core, so the pyramid is built only where tiles ran."""
        cy, cx = self.chunks
        if self.ran is None:
            h, w = self.slide.yx_shape(self.level)
            self.ran = np.zeros((-(-h // cy), -(-w // cx)), bool)
        self.ran[core[0].start // cy:(core[0].stop - 1) // cy + 1, core[1].start // cx:(core[1].stop - 1) // cx + 1] = True

    def ran_in(self, ends: list[tuple[int, int]]) -> bool:
        """Did any tile run under these inference-level rows and columns (first and last of each)?"""
        (y0, y1), (x0, x1), (cy, cx) = *ends, self.chunks
        return bool(self.ran[y0 // cy:y1 // cy + 1, x0 // cx:x1 // cx + 1].any())

    def save_progress(self, plane: int, batches: int, stats: dict) -> None:
        """Record, after a batch's tiles are written, how far the run got: a killed run resumes here."""
        self.progress.setdefault("done", {})[str(plane)] = batches
        self.progress["stats"] = stats
        self.group.attrs["sebre"] = {"level": self.level, "progress": self.progress}

    def done(self, plane: int) -> int:
        return int(self.progress.get("done", {}).get(str(plane), 0))

    def array(self, level: int) -> LabelArray:
        return self._open(self.slide.levels[level].path)

    def _open(self, path: str) -> LabelArray:
        if path not in self.opened:
            array = self.group[path]
            self.opened[path] = chunk_files(array) or array
        return self.opened[path]

    def _index(self, z: int, window: tuple[slice, slice]) -> tuple:
        return tuple(z if a == "z" else 0 if a == "t" else window[0] if a == "y" else window[1] for a in label_axes(self.slide))

    def write(self, z: int, window: tuple[slice, slice], values: np.ndarray, path: str | None = None) -> None:
        """Write `values` into plane z of where tiles go (the inference level, or the scratch array)."""
        self._open(path or self.target)[self._index(z, window)] = values

    def read(self, z: int, window: tuple[slice, slice], path: str | None = None) -> np.ndarray:
        return np.asarray(self._open(path or self.target)[self._index(z, window)])

    @functools.cached_property
    def target(self) -> str:
        """The array tiles write into: a scratch array in instance mode, numbered at the end."""
        return SCRATCH if SCRATCH in self.group else self.slide.levels[self.level].path

    @property
    def writes_final(self) -> bool:
        """Do tiles write the layer's final values (region mode), not a scratch array numbered at the end?"""
        return self.target == self.slide.levels[self.level].path

    def write_finer(self, z: int, key: tuple[int, int], values: np.ndarray) -> None:
        """The finer levels over inference-level chunk `key`, from its final `values`, by nearest
        upsampling. Written by the stitcher's thread beside the model rather than after it (finer
        levels hold most of a pyramid's chunks); build_pyramid then leaves them out."""
        window, src = self.chunk_window(key), self.slide.yx_shape(self.level)
        for i in range(self.level):
            block, index = [], []
            for w, s, d in zip(window, src, self.slide.yx_shape(i)):
                pixels, source = _sampled_from(w, s, d)  # exactly the pixels build_pyramid takes from here
                block.append(slice(int(pixels[0]), int(pixels[-1]) + 1))
                index.append(source - w.start)
            self.write(z, tuple(block), values.take(index[0], 0).take(index[1], 1), self.slide.levels[i].path)
        self.finer_done.add((z, *key))

    def level_chunks(self, level: int) -> tuple[int, int]:
        return self.array(level).chunks[-2:]

    def level_window(self, level: int, key: tuple[int, int]) -> tuple[slice, slice]:
        """The window of chunk (row, column) of a level."""
        return tuple(slice(k * c, min((k + 1) * c, n)) for k, c, n in zip(key, self.level_chunks(level), self.slide.yx_shape(level)))

    def drop_scratch(self) -> None:
        if SCRATCH in self.group:
            del self.group[SCRATCH]
            self.opened.pop(SCRATCH, None)


class CoarserLevels:
    """A plane's coarser levels made from the inference level's final chunks as the stitcher
    writes them, each coarser chunk written once every chunk under it is final: beside the model,
    from values in memory, instead of read back by build_pyramid afterwards. The pixel rule is
    build_pyramid's (each level sampled from the one below it), so the result is the same.

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

    def _rows(self, level: int, axis: int, window: slice) -> tuple[np.ndarray, np.ndarray]:
        """Pixels of `level` along an axis sampled from `window` of the level below, and their sources."""
        return _sampled_from(window, self.layer.slide.yx_shape(level - 1)[axis], self.layer.slide.yx_shape(level)[axis])

    def _above(self, level: int, key: tuple[int, int]) -> set[tuple[int, int]]:
        """Chunks of `level` with pixels sampled from chunk `key` of the level below."""
        spans = []
        for axis, (w, c) in enumerate(zip(self.layer.level_window(level - 1, key), self.layer.level_chunks(level))):
            pixels = self._rows(level, axis, w)[0]
            spans.append(range(int(pixels[0]) // c, int(pixels[-1]) // c + 1) if len(pixels) else range(0))
        return {(r, c) for r in spans[0] for c in spans[1]}

    def final(self, level: int, key: tuple[int, int], values: np.ndarray) -> None:
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
                pixels, source = self._rows(level + 1, axis, w)
                keep = (pixels >= t.start) & (pixels < t.stop)
                part.append((slice(int(pixels[keep][0]) - t.start, int(pixels[keep][-1]) + 1 - t.start), source[keep] - w.start))
            buffer[part[0][0], part[1][0]] = values.take(part[0][1], 0).take(part[1][1], 1)
            self.waiting[(level + 1, above)] -= 1
            if not self.waiting[(level + 1, above)]:
                del self.waiting[(level + 1, above)]
                del self.open[(level + 1, above)]
                self.layer.write(self.z, target, buffer, self.layer.slide.levels[level + 1].path)
                self.layer.coarser_done.add((level + 1, self.z, *above))
                self.final(level + 1, above, buffer)


def create_layer(slide: Slide, name: str, level: int, overwrite: bool = False, run_key: str = "",
                 resume: bool = False, scratch: bool = False) -> LabelLayer:
    """Make empty arrays for every level, chunked like the image, after checking the name is free.

    An unfinished layer left by a killed run with the same `run_key` (same model, slide level and
    settings) is reopened as it is, so the run resumes where it stopped; with `resume`, there
    must be one."""
    check_name(name)
    root = open_writable(slide)
    labels = root["labels"] if "labels" in root else None
    if labels is not None and name in labels:
        finished = name in slide.label_names()
        progress = dict(labels[name].attrs).get("sebre", {}).get("progress", {})
        if not overwrite and run_key and progress.get("key") == run_key:  # killed mid-run, or while finishing
            _make_arrays(slide, labels[name], level, scratch)  # those a kill while creating the layer left out
            _sweep_partials(slide, name)
            return LabelLayer(slide, name, labels[name], level, progress)
        if resume:
            raise UserError(f"{slide.url}: --resume, but label layer {name!r} is not an interrupted run of this command "
                            "(finished, or other model or settings); rerun without --resume (add --overwrite to replace it)")
        if not overwrite:
            state = "exists" if finished else "exists, unfinished, from a run with other settings"
            raise UserError(f"{slide.url}: label layer {name!r} {state}; pass --overwrite to replace it or --labels NAME for another")
        _edit_list(slide, root.store, lambda names: [n for n in names if n != name])
        del labels[name]
    if resume:
        raise UserError(f"{slide.url}: --resume, but there is no label layer {name!r} to resume; run without --resume")
    progress = {"key": run_key, "done": {"0": 0}, "stats": {}}
    with _label_list(slide, root.store) as labels:  # the run key comes with the group: a kill from here on resumes
        group = labels.create_group(name, attributes={"sebre": {"level": level, "progress": progress}})
    _make_arrays(slide, group, level, scratch)
    return LabelLayer(slide, name, group, level, progress)


PARTIAL = re.compile(r"\.[0-9a-f]{32}\.partial$")  # zarr's LocalStore writes <key>.<uuid hex>.partial, then renames it


def _sweep_partials(slide: Slide, name: str) -> None:
    """Remove the temporary files of writes a kill cut short, from this layer only: the rename never
    happened, so they hold nothing the layer needs."""
    folder = _local_labels(slide)
    if folder is not None:
        for path in (folder / name).rglob("*.partial"):
            if PARTIAL.search(path.name):
                path.unlink(missing_ok=True)


def _make_arrays(slide: Slide, group: zarr.Group, level: int, scratch: bool) -> None:
    """The layer's empty arrays, one per image level chunked like it (and the scratch array), where missing."""
    options = slide.ngff.array_options(label_axes(slide))
    wanted = [(lv.path, lv) for lv in slide.levels] + ([(SCRATCH, slide.levels[level])] if scratch else [])
    for path, lv in wanted:
        if path not in group:
            group.create_array(path, shape=_drop_channel(slide, lv.shape), chunks=_drop_channel(slide, lv.chunks),
                               dtype=LABEL_DTYPE, fill_value=0, **options)


def open_layer(slide: Slide, name: str, level: int) -> LabelLayer:
    """An unfinished layer made by create_layer, opened again for writing (by a cluster's worker)."""
    return LabelLayer(slide, name, open_writable(slide)["labels"][name], level)


def _source_index(block: tuple[slice, ...], src_shape: tuple[int, ...], dst_shape: tuple[int, ...]) -> list[np.ndarray]:
    """For each axis, the source pixel under each destination pixel's centre (nearest neighbour)."""
    return [np.minimum(((np.arange(b.start, b.stop) + 0.5) * s / d).astype(np.int64), s - 1)
            for b, s, d in zip(block, src_shape, dst_shape)]


def _sampled_from(window: slice, src: int, dst: int) -> tuple[np.ndarray, np.ndarray]:
    """Along one axis, the pixels of a level of `dst` pixels whose nearest source (_source_index)
    in a level of `src` pixels lies in `window`, and those sources: what one source chunk gives
    to a finer or a coarser level."""
    lo, hi = max(window.start * dst // src - 1, 0), min(-(-window.stop * dst // src) + 1, dst)  # a pixel more than needed each way
    source = _source_index((slice(lo, hi),), (src,), (dst,))[0]
    inside = np.flatnonzero((source >= window.start) & (source < window.stop))
    return lo + inside, source[inside]


def _source_ends(block: tuple[slice, ...], src_shape: tuple[int, ...], dst_shape: tuple[int, ...]) -> list[tuple[int, int]]:
    """For each axis, the first and last pixel of _source_index (it only grows): the source rows and
    columns a block reads, found without an array per block (the same float64 arithmetic)."""
    return [(min(int((b.start + 0.5) * s / d), s - 1), min(int((b.stop - 1 + 0.5) * s / d), s - 1))
            for b, s, d in zip(block, src_shape, dst_shape)]


def _write_block(src: LabelArray, dst: LabelArray, block: tuple[slice, ...]) -> None:
    """One destination chunk from the source level, label-safe."""
    index = _source_index(block, src.shape, dst.shape)
    window = tuple(slice(int(i.min()), int(i.max()) + 1) for i in index)
    values = src[window]
    for axis, (i, w) in enumerate(zip(index, window)):  # one axis at a time: numpy's take is several times np.ix_'s speed
        values = values.take(i - w.start, axis)
    dst[block] = values


def _blocks(array: LabelArray):
    """Every chunk of an array as a tuple of slices."""
    ranges = [[slice(a, min(a + c, n)) for a in range(0, n, c)] for n, c in zip(array.shape, array.chunks)]
    return itertools.product(*ranges)


def _ran_blocks(layer: LabelLayer, dst: LabelArray):
    """The chunks of `dst` over the inference-level chunks where tiles ran, found from those chunks
    (not by visiting every chunk of the level, which on a mostly-glass slide costs time per glass)."""
    (h, w), (cy, cx) = layer.slide.yx_shape(layer.level), layer.chunks
    (dh, dw), (dy, dx) = dst.shape[-2:], dst.chunks[-2:]
    wanted = set()
    for iy, ix in zip(*np.nonzero(layer.ran)):
        rows = range(iy * cy * dh // h // dy, -(-min((iy + 1) * cy, h) * dh // h) // dy + 1)
        cols = range(ix * cx * dw // w // dx, -(-min((ix + 1) * cx, w) * dw // w) // dx + 1)
        wanted.update((r, c) for r in rows if r * dy < dh for c in cols if c * dx < dw)
    lead = [[slice(a, min(a + c, n)) for a in range(0, n, c)] for n, c in zip(dst.shape[:-2], dst.chunks[:-2])]
    for r, c in sorted(wanted):
        yx = (slice(r * dy, min((r + 1) * dy, dh)), slice(c * dx, min((c + 1) * dx, dw)))
        for front in itertools.product(*lead):
            yield (*front, *yx)


def build_pyramid(layer: LabelLayer) -> None:
    """Fill every other level chunk by chunk with Dask, label-safe: finer levels from the inference
    level, each coarser level from the one above it, so a task reads about four chunks whatever
    the level (a coarse chunk read straight from the inference level can span gigabytes).

    Only chunks over the tiles that ran are computed (`layer.ran`): on a slide that is mostly
    glass, time follows tissue, and the glass chunks are never visited nor written."""
    inference = layer.array(layer.level)
    finer = list(range(layer.level))
    coarser = list(range(layer.level + 1, len(layer.slide.levels)))
    for i in finer + coarser:  # coarser levels in order: each needs the one before it complete
        dst = layer.array(i)
        src = inference if i < layer.level else layer.array(i - 1)
        blocks = _blocks(dst) if layer.ran is None else _ran_blocks(layer, dst)
        blocks = sorted((b for b in blocks if layer.ran is None or layer.ran_in(_source_ends(b[-2:], inference.shape[-2:], dst.shape[-2:]))),
                        key=lambda b: [s.start for s in b])  # plane by plane, row by row: neighbours in a row meet
        if i < layer.level and layer.finer_done:
            blocks = [b for b in blocks if not _written_by_stitcher(layer, b, dst)]
        if i > layer.level and layer.coarser_done:
            blocks = [b for b in blocks if not _coarser_by_stitcher(layer, i, b, dst)]
        write = dask.delayed(functools.partial(_write_block, src, dst))  # a partial: Dask does not walk the zarr arrays' fields
        dask.compute(*[write(run) for run in _row_runs(blocks)], scheduler=_scheduler())


def _written_by_stitcher(layer: LabelLayer, block: tuple[slice, ...], dst: LabelArray) -> bool:
    """Does a finer-level chunk lie over inference chunks whose finer levels are written already?"""
    cy, cx = layer.chunks
    rows, cols = _source_ends(block[-2:], layer.slide.yx_shape(layer.level), dst.shape[-2:])
    return all((z, r, c) in layer.finer_done for z in _planes(layer, block)
               for r in range(rows[0] // cy, rows[1] // cy + 1) for c in range(cols[0] // cx, cols[1] // cx + 1))


def _coarser_by_stitcher(layer: LabelLayer, level: int, block: tuple[slice, ...], dst: LabelArray) -> bool:
    """Is a coarser level's chunk written already, for every plane it holds (CoarserLevels)?"""
    cy, cx = dst.chunks[-2:]
    return all((level, z, block[-2].start // cy, block[-1].start // cx) in layer.coarser_done for z in _planes(layer, block))


def _planes(layer: LabelLayer, block: tuple[slice, ...]) -> range:
    """The planes a block of a label array holds (plane 0 alone without a z axis)."""
    axes = label_axes(layer.slide)
    planes = block[axes.index("z")] if "z" in axes else slice(0, 1)
    return range(planes.start, planes.stop)


def _scheduler() -> Callable | None:
    """Dask's default (the cluster's workers under `sebre segment --scheduler` and the like) once
    distributed is loaded; else Dask's threads, passed as a function: given a name, or left to
    choose, Dask imports distributed (a quarter of a second) only to look for a client."""
    return None if "distributed" in sys.modules else dask.threaded.get


RUN_CHUNKS = 16  # chunks one pyramid task writes at most: one zarr call each way instead of one per chunk


def _row_runs(blocks: list[tuple[slice, ...]]) -> Iterator[tuple[slice, ...]]:
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


def _axes_meta(slide: Slide) -> list[dict]:
    kinds = {"t": ("time", None), "z": ("space", "micrometer"), "y": ("space", "micrometer"), "x": ("space", "micrometer")}
    out = []
    for a in label_axes(slide):
        kind, unit = kinds[a]
        out.append({"name": a, "type": kind, **({"unit": unit} if unit else {})})
    return out


def _transforms(slide: Slide, level) -> list[dict]:
    """The image level's scale (and translation, if any) less the channel axis: labels overlay exactly."""
    out = [{"type": "scale", "scale": list(_drop_channel(slide, level.scale))}]
    for t in level.transforms:
        if t.get("type") == "translation" and len(t.get("translation", ())) == len(slide.axes):
            out.append({"type": "translation", "translation": list(_drop_channel(slide, t["translation"]))})
    return out


def finish_layer(layer: LabelLayer, properties: list[dict], colors: list[dict], provenance: dict | None = None) -> None:
    """Mark the layer complete: multiscales and image-label, then the name in the labels list (what
    readers go by), then the provenance in place of the progress record. A kill before the list leaves
    an unfinished layer; a kill after it, a complete one that the same command finishes again."""
    slide, fmt = layer.slide, layer.slide.ngff.writer_format()
    datasets = [{"path": lv.path, "coordinateTransformations": _transforms(slide, lv)} for lv in slide.levels]
    write_multiscales_metadata(layer.group, datasets, fmt=fmt, axes=_axes_meta(slide), name=layer.name)
    image_label = {"colors": colors, "properties": properties, "source": {"image": "../../"}, "version": fmt.version}
    add_metadata(layer.group, {"image-label": image_label}, fmt=fmt)
    _edit_list(slide, layer.group.store, lambda names: names if layer.name in names else [*names, layer.name])
    layer.group.attrs["sebre"] = {**(provenance or {}), "level": layer.level}  # progress dropped: finished


@dataclass
class LabelInfo:
    """A finished label layer as readers see it."""

    name: str
    group: zarr.Group
    properties: dict[int, dict]
    colors: dict[int, tuple[int, int, int]]
    paths: list[str]


def open_labels(slide: Slide, name: str) -> LabelInfo:
    group = node(slide.url, slide.group, f"labels/{name}")
    if name not in slide.label_names():
        if group is not None:
            raise UserError(f"{slide.url}: label layer {name!r} is unfinished (its run was killed or is still running); run the "
                            "same `sebre segment` command again to resume it, or pass --overwrite to start over")
        have = ", ".join(slide.label_names()) or "none"
        raise UserError(f"{slide.url}: no finished label layer {name!r} (layers: {have}); run `sebre segment` or pass --labels NAME")
    where = f"{slide.url}/labels/{name}"
    if not isinstance(group, zarr.Group):
        raise UserError(f"{where}: listed in labels/ but not a label layer group; remove it from the list or re-export it")
    attrs = ome_attrs(group)
    levels = read_levels(where, group, read_multiscale(where, attrs), label_axes(slide))
    props, colors = _image_label(where, attrs)
    return LabelInfo(name, group, props, colors, [lv.path for lv in levels])


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _valid_property(p: dict) -> bool:
    return (_integer(p["label-value"]) and all(_integer(p[k]) for k in ("class", "section", "instance") if p.get(k) is not None)
            and (p.get("score") is None or (isinstance(p["score"], (int, float)) and not isinstance(p["score"], bool))))


def _valid_color(c: dict) -> bool:
    rgba = c.get("rgba")
    return _integer(c["label-value"]) and isinstance(rgba, list) and len(rgba) >= 3 and all(_integer(v) and 0 <= v <= 255 for v in rgba[:3])


def _image_label(where: str, attrs: dict) -> tuple[dict[int, dict], dict[int, tuple[int, int, int]]]:
    """Properties and colours by label value. Entries without a label value say nothing and are
    skipped; malformed ones are refused, so a layer from elsewhere fails here, not mid-export."""
    image_label = attrs.get("image-label", {})
    props = image_label.get("properties", []) if isinstance(image_label, dict) else None
    colors = image_label.get("colors", []) if isinstance(image_label, dict) else None
    if isinstance(props, list) and isinstance(colors, list):
        props = [p for p in props if isinstance(p, dict) and "label-value" in p]
        colors = [c for c in colors if isinstance(c, dict) and "label-value" in c]
        if all(map(_valid_property, props)) and all(map(_valid_color, colors)):
            return {p["label-value"]: dict(p) for p in props}, {c["label-value"]: tuple(c["rgba"][:3]) for c in colors}
    raise UserError(f"{where}: malformed image-label metadata (properties and colors: lists of objects with an integer "
                    "label-value, integer class and section, RGB values 0-255); fix or re-export the label layer")


def class_lut(info: LabelInfo, max_value: int) -> np.ndarray:
    """Lookup table label value -> class index, from the layer's properties ("class")."""
    lut = np.zeros(max_value + 1, np.int64)
    for value, p in info.properties.items():
        if value <= max_value and "class" in p:
            lut[value] = int(p["class"])
    return lut


def read_plane(info: LabelInfo, slide: Slide, level: int, z: int = 0) -> np.ndarray:
    arr = info.group[info.paths[level]]
    index = tuple(z if a == "z" else 0 if a == "t" else slice(None) for a in label_axes(slide))
    return np.asarray(arr[index])
