"""The label layer being written: `labels/<name>/` in the slide's own store, from creation to finish.

A layer is made with empty arrays, one per image level chunked like it, and filled chunk by chunk
(through chunk files where the store allows: chunkfiles.py). Its name enters the labels group's
list last, after its multiscales and image-label metadata: readers go by that list (labels.py), so
a layer not in it is an unfinished run, resumed by the same command and never mistaken for a
result. A run holds a lock file beside its layer (labels/.sebre-lock-<name>), and the list itself
is edited under labels/.sebre-lock, so runs on other names in the same store never lose each
other's entry. The pyramid's pixels are pyramid.py's; this module only stores them.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr
from ome_zarr.writer import add_metadata, write_multiscales_metadata

from .chunkfiles import ChunkFiles, chunk_files
from .errors import UserError
from .instances import SCRATCH
from .labels import LABEL_DTYPE, MARGIN, label_axes
from .lock import locked
from .ngff import ome_attrs
from .slide import Level, Slide

LabelArray = zarr.Array | ChunkFiles  # a level of the layer, as written
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
LOCK = ".sebre-lock"  # lock files start with ".", which layer names cannot: the two never collide
MARGIN_DTYPE = np.uint16  # 0: no margin known (that pixel's finer levels go by nearest pixel)
PARTIAL = re.compile(r"\.[0-9a-f]{32}\.partial$")  # zarr's LocalStore writes <key>.<uuid hex>.partial, then renames it


def check_name(name: str) -> str:
    """`name` if it is a valid layer name (one path segment, as NAME_PATTERN says); else a UserError."""
    if not NAME_PATTERN.match(name):
        raise UserError(
            f"label name {name!r} is not a valid path segment; use letters, digits, '.', '_' or '-' "
            "(for example 'sebre')"
        )
    return name


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
            raise UserError(
                f"{slide.url}: the store is read-only ({path} is not writable) and labels are written "
                "inside it; copy the slide somewhere writable, or ask for write access"
            )


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
    url = url[len("file://") :] if url.startswith("file://") else url
    try:
        return zarr.open_group(url, mode="r+")
    except Exception as exc:
        raise UserError(
            f"{slide.url}: the store cannot be opened for writing ({exc}); check permissions or copy "
            "the slide somewhere writable"
        ) from exc


def _drop_channel(slide: Slide, values: tuple) -> tuple:
    """Per-axis `values` of the image less the channel axis's: the label layer's."""
    return tuple(v for a, v in zip(slide.axes, values) if a != "c")


@dataclass
class LabelLayer:
    """An open, unfinished label layer being filled at one inference level.

    Knows the layer's chunks and windows, reads and writes its arrays (as chunk files where it
    can), and records the run's progress in the layer's attributes. The other levels' pixels are
    pyramid.py's and finer.py's to compute; `coarser_done` says which coarser chunks this process wrote.
    """

    slide: Slide
    name: str
    group: zarr.Group
    level: int
    progress: dict = field(default_factory=dict)  # {"key": run key, "done": {plane: batches}, "stats": {...}}
    # per inference-level chunk (row, column): does a tile's core cover it? None: not noted, every chunk counts
    tiled_chunks: np.ndarray | None = None
    # arrays by path (opening one reads its metadata), as chunk files where they can be (chunkfiles.py)
    opened: dict[str, LabelArray] = field(default_factory=dict, repr=False)
    # (level, plane, row, column) of the coarser levels' chunks this process has written
    coarser_done: set[tuple[int, int, int, int]] = field(default_factory=set, repr=False)

    @functools.cached_property
    def chunks(self) -> tuple[int, int]:
        """(y, x) chunk shape of the inference level (asked per pyramid chunk: read from the store once)."""
        return self.array(self.level).chunks[-2:]

    def chunk_window(self, key: tuple[int, int]) -> tuple[slice, slice]:
        """The window of the inference level's chunk (row, column)."""
        return self.level_window(self.level, key)

    def chunks_under(self, window: tuple[slice, slice]) -> list[tuple[int, int]]:
        """(row, column) of the inference level's chunks that a window touches."""
        (ys, xs), (cy, cx) = window, self.chunks
        return [
            (r, c)
            for r in range(ys.start // cy, (ys.stop - 1) // cy + 1)
            for c in range(xs.start // cx, (xs.stop - 1) // cx + 1)
        ]

    def mark_tiled(self, core: tuple[slice, slice]) -> None:
        """Note a tile's core, so the pyramid is built only where tiles ran."""
        cy, cx = self.chunks
        if self.tiled_chunks is None:
            h, w = self.slide.yx_shape(self.level)
            self.tiled_chunks = np.zeros((-(-h // cy), -(-w // cx)), bool)
        ys, xs = core
        self.tiled_chunks[ys.start // cy : (ys.stop - 1) // cy + 1, xs.start // cx : (xs.stop - 1) // cx + 1] = True

    def any_tiled(self, ends: list[tuple[int, int]]) -> bool:
        """Did any tile run under these inference-level rows and columns (first and last of each)?"""
        (y0, y1), (x0, x1), (cy, cx) = *ends, self.chunks
        return bool(self.tiled_chunks[y0 // cy : y1 // cy + 1, x0 // cx : x1 // cx + 1].any())

    def save_progress(self, plane: int, batches: int, stats: dict) -> None:
        """Record, after a batch's tiles are written, how far the run got: a killed run resumes here."""
        self.progress.setdefault("done", {})[str(plane)] = batches
        self.progress["stats"] = stats
        self.group.attrs["sebre"] = {"level": self.level, "progress": self.progress}

    def done(self, plane: int) -> int:
        """Batches of `plane` whose tiles are all in the store."""
        return int(self.progress.get("done", {}).get(str(plane), 0))

    def array(self, level: int) -> LabelArray:
        return self._open(self.slide.levels[level].path)

    def _open(self, path: str) -> LabelArray:
        if path not in self.opened:
            array = self.group[path]
            self.opened[path] = chunk_files(array) or array
        return self.opened[path]

    def _plane_index(self, z: int, window: tuple[slice, slice]) -> tuple:
        """The index of a (y, x) window of plane z in a label array (time point 0)."""
        return tuple(
            z if a == "z" else 0 if a == "t" else window[0] if a == "y" else window[1] for a in label_axes(self.slide)
        )

    def write(self, z: int, window: tuple[slice, slice], values: np.ndarray, path: str | None = None) -> None:
        """Write `values` into plane z of the array at `path`: by default where tiles go (`target`)."""
        self._open(path or self.target)[self._plane_index(z, window)] = values

    def write_constant(self, z: int, window: tuple[slice, slice], value: int, path: str) -> None:
        """Fill a window of plane z with one value: chunks it covers whole, inside the array, are
        stored from bytes encoded once per value (ChunkFiles.write_constant); the rest as `write`."""
        array = self._open(path)
        chunks, shape = array.chunks[-2:], array.shape[-2:]
        inside = all(w.start % c == 0 and w.stop % c == 0 and w.stop <= n for w, c, n in zip(window, chunks, shape))
        if not isinstance(array, ChunkFiles) or not inside or any(c != 1 for c in array.chunks[:-2]):
            self.write(z, window, np.full([w.stop - w.start for w in window], value, LABEL_DTYPE), path)
            return
        lead = [z if a == "z" else 0 for a in label_axes(self.slide)[:-2]]
        for r in range(window[0].start // chunks[0], window[0].stop // chunks[0]):
            for c in range(window[1].start // chunks[1], window[1].stop // chunks[1]):
                array.write_constant((*lead, r, c), value)

    def read(self, z: int, window: tuple[slice, slice], path: str | None = None) -> np.ndarray:
        """Plane z's values in a window of the array at `path`, by default `target`."""
        return np.asarray(self._open(path or self.target)[self._plane_index(z, window)])

    @functools.cached_property
    def target(self) -> str:
        """The array tiles write into: a scratch array in instance mode, numbered at the end."""
        return SCRATCH if SCRATCH in self.group else self.slide.levels[self.level].path

    @property
    def writes_final(self) -> bool:
        """Do tiles write the layer's final values (region mode), not a scratch array numbered at the end?"""
        return self.target == self.slide.levels[self.level].path

    def level_chunks(self, level: int) -> tuple[int, int]:
        return self.array(level).chunks[-2:]

    def level_window(self, level: int, key: tuple[int, int]) -> tuple[slice, slice]:
        """The window of chunk (row, column) of a level."""
        return tuple(
            slice(k * c, min((k + 1) * c, n))
            for k, c, n in zip(key, self.level_chunks(level), self.slide.yx_shape(level))
        )

    def drop_scratch(self) -> None:
        """Delete the scratch array of instance mode once the layer is finished. The margins stay:
        exports trace outlines at the inference level by the rule the finer levels follow."""
        if SCRATCH in self.group:
            del self.group[SCRATCH]
            self.opened.pop(SCRATCH, None)


def create_layer(
    slide: Slide,
    name: str,
    level: int,
    overwrite: bool = False,
    run_key: str = "",
    resume: bool = False,
    scratch: bool = False,
) -> LabelLayer:
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
            raise UserError(
                f"{slide.url}: --resume, but label layer {name!r} is not an interrupted run of this "
                "command (finished, or other model or settings); rerun without --resume (add "
                "--overwrite to replace it)"
            )
        if not overwrite:
            state = "exists" if finished else "exists, unfinished, from a run with other settings"
            raise UserError(
                f"{slide.url}: label layer {name!r} {state}; pass --overwrite to replace it or "
                "--labels NAME for another"
            )
        _edit_list(slide, root.store, lambda names: [n for n in names if n != name])
        del labels[name]
    if resume:
        raise UserError(f"{slide.url}: --resume, but there is no label layer {name!r} to resume; run without --resume")
    progress = {"key": run_key, "done": {"0": 0}, "stats": {}}
    with _label_list(slide, root.store) as labels:  # the run key comes with the group: a kill from here on resumes
        group = labels.create_group(name, attributes={"sebre": {"level": level, "progress": progress}})
    _make_arrays(slide, group, level, scratch)
    return LabelLayer(slide, name, group, level, progress)


def _sweep_partials(slide: Slide, name: str) -> None:
    """Remove the temporary files of writes a kill cut short, from this layer only: the rename never
    happened, so they hold nothing the layer needs."""
    folder = _local_labels(slide)
    if folder is not None:
        for path in (folder / name).rglob("*.partial"):
            if PARTIAL.search(path.name):
                path.unlink(missing_ok=True)


def _make_arrays(slide: Slide, group: zarr.Group, level: int, scratch: bool) -> None:
    """The layer's empty arrays, one per image level chunked like it, and at the inference level
    the margins and (instance mode) the scratch array of regions, where missing."""
    options = slide.ngff.array_options(label_axes(slide))
    wanted = [(lv.path, lv, LABEL_DTYPE) for lv in slide.levels] + [(MARGIN, slide.levels[level], MARGIN_DTYPE)]
    wanted += [(SCRATCH, slide.levels[level], LABEL_DTYPE)] if scratch else []
    for path, lv, dtype in wanted:
        if path not in group:
            group.create_array(
                path,
                shape=_drop_channel(slide, lv.shape),
                chunks=_drop_channel(slide, lv.chunks),
                dtype=dtype,
                fill_value=0,
                **options,
            )


def reopen_layer(slide: Slide, name: str, level: int) -> LabelLayer:
    """An unfinished layer made by create_layer, opened again for writing (by a cluster's worker)."""
    return LabelLayer(slide, name, open_writable(slide)["labels"][name], level)


def _axes_meta(slide: Slide) -> list[dict]:
    """The layer's NGFF axes: the image's less the channel, space in the image's own units (its
    scales are copied as they are), micrometres where the image names none."""
    out = []
    for a in label_axes(slide):
        if a == "t":
            out.append({"name": a, "type": "time"})
        else:
            out.append({"name": a, "type": "space", "unit": slide.units.get(a, "micrometer")})
    return out


def _label_transforms(slide: Slide, level: Level) -> list[dict]:
    """The coordinateTransformations of the layer's level over image `level`: the image level's
    scale (and translation, if any) less the channel axis, so labels overlay exactly."""
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
    datasets = [{"path": lv.path, "coordinateTransformations": _label_transforms(slide, lv)} for lv in slide.levels]
    write_multiscales_metadata(layer.group, datasets, fmt=fmt, axes=_axes_meta(slide), name=layer.name)
    image_label = {"colors": colors, "properties": properties, "source": {"image": "../../"}, "version": fmt.version}
    add_metadata(layer.group, {"image-label": image_label}, fmt=fmt)
    _edit_list(slide, layer.group.store, lambda names: names if layer.name in names else [*names, layer.name])
    layer.group.attrs["sebre"] = {**(provenance or {}), "level": layer.level}  # progress dropped: finished
