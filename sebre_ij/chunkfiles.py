"""The label arrays' chunks read and written as files, as zarr would, without its per-call cost.

zarr-python 3 spends far more CPU per chunk written (its asyncio loop, a thread hop per chunk) than
compressing a label chunk takes (benchmarks/README.md). A slide's label pyramid is thousands of
chunks, written beside the model on the same cores, so for an array on a local disk with a plain codec
(the bytes, then one zstd or blosc compressor: what create_layer makes) the chunks are encoded
and written here. The files are what zarr writes (same keys and bytes; a temporary file renamed
into place; chunks of only the fill value left out), so zarr and every NGFF reader read them.
Other arrays (remote stores, filters, sharding) stay with zarr: `chunk_files` returns None.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import uuid
from pathlib import Path

import numcodecs
import numpy as np
import zarr
from zarr.codecs import BloscCodec, BytesCodec, ZstdCodec
from zarr.storage import LocalStore

Index = tuple[int | slice, ...]


def _v3_compressor(codec) -> numcodecs.abc.Codec | None:
    """numcodecs' twin of a zarr v3 compressor: same frames both ways."""
    if isinstance(codec, ZstdCodec):
        return numcodecs.Zstd(level=codec.level, checksum=codec.checksum)
    if isinstance(codec, BloscCodec):
        shuffle = {
            "noshuffle": numcodecs.Blosc.NOSHUFFLE,
            "shuffle": numcodecs.Blosc.SHUFFLE,
            "bitshuffle": numcodecs.Blosc.BITSHUFFLE,
        }[codec.shuffle.value]
        return numcodecs.Blosc(cname=codec.cname.value, clevel=codec.clevel, shuffle=shuffle, blocksize=codec.blocksize)
    return None


def _codec(array: zarr.Array) -> tuple[numcodecs.abc.Codec, np.dtype] | None:
    """(compressor, on-disk dtype) of an array whose chunks are C-order bytes then one compressor."""
    meta = array.metadata
    if meta.zarr_format == 2:
        if meta.filters or meta.order != "C" or not isinstance(meta.compressor, (numcodecs.Zstd, numcodecs.Blosc)):
            return None
        return meta.compressor, meta.dtype.to_native_dtype()
    codecs = meta.codecs
    if (
        len(codecs) != 2
        or not isinstance(codecs[0], BytesCodec)
        or (codecs[0].endian and codecs[0].endian.value != "little")
    ):
        return None
    compressor = _v3_compressor(codecs[1])
    return None if compressor is None else (compressor, meta.data_type.to_native_dtype().newbyteorder("<"))


def chunk_files(array: zarr.Array) -> ChunkFiles | None:
    """The array as chunk files on this machine, or None where zarr must do the work."""
    store = array.store_path.store
    codec = _codec(array)
    if not isinstance(store, LocalStore) or codec is None or array.metadata.fill_value is None:
        return None
    return ChunkFiles(array, Path(store.root) / array.path, *codec)


def write_file(path: str, data: bytes) -> None:
    """Write a new file with os calls (a chunk file is written thousands of times a level: pathlib's
    and io's layers cost more than the system calls here)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


class ChunkFiles:
    """`array[index]` and `array[index] = values` over whole chunks; a chunk the window only
    partly covers is read, changed and written again, as zarr does."""

    def __init__(self, array: zarr.Array, folder: Path, compressor: numcodecs.abc.Codec, dtype: np.dtype):
        self.array, self.folder, self.compressor, self.dtype = array, folder, compressor, dtype
        self.shape, self.chunks = array.shape, array.chunks
        self.fill = np.asarray(array.metadata.fill_value, dtype).item()
        self._root = str(folder)
        self._made: set[str] = set()  # folders known to exist
        self._fresh: set[str] = set()  # folders this object made or found missing: no file there it did not write
        self._constant: dict[int, bytes] = {}  # value -> a whole chunk of it, encoded once

    def _path(self, coords: tuple[int, ...]) -> str:
        return f"{self._root}/{self.array.metadata.encode_chunk_key(coords)}"

    def read_chunk(self, coords: tuple[int, ...]) -> np.ndarray:
        """A chunk's values at its full chunk shape (edge chunks too); the fill value where none is stored."""
        try:
            with open(self._path(coords), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return np.full(self.chunks, self.fill, self.dtype)
        return np.frombuffer(self.compressor.decode(data), self.dtype).reshape(self.chunks).copy()

    def write_chunk(self, coords: tuple[int, ...], values: np.ndarray, check: bool = True) -> None:
        """Store a whole chunk (at its full chunk shape); one of only the fill value is removed
        instead (`check=False`: the caller knows it holds another value)."""
        if check and (not values.any() if self.fill == 0 else (values == self.fill).all()):
            self._unlink(self._path(coords))
            return
        self._store(coords, self.compressor.encode(np.ascontiguousarray(values, self.dtype)))

    def write_constant(self, coords: tuple[int, ...], value: int) -> None:
        """Store a chunk holding one value throughout: encoded once per value, the bytes reused for
        every such chunk (a region's inside fills most of a fine level's chunks). The fill value is
        left out, as write_chunk leaves it."""
        if value == self.fill:
            self._unlink(self._path(coords))
            return
        if value not in self._constant:
            self._constant[value] = self.compressor.encode(np.full(self.chunks, value, self.dtype))
        self._store(coords, self._constant[value])

    def clear(self, coords: tuple[int, ...]) -> None:
        """A chunk of only the fill value: remove its file, if one could be there. A folder this
        object made, or found missing, holds only files it wrote, so it costs no system call."""
        path = self._path(coords)
        parent = os.path.dirname(path)
        if parent in self._fresh:
            return
        if parent not in self._made:
            if not os.path.isdir(parent):
                self._fresh.add(parent)
                return
            self._made.add(parent)
        self._unlink(path)

    @staticmethod
    def _unlink(path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    def _store(self, coords: tuple[int, ...], data: bytes) -> None:
        """A chunk's encoded bytes into its file, through a temporary file renamed into place (as
        zarr's LocalStore: readers never see half a chunk)."""
        path = self._path(coords)
        parent = os.path.dirname(path)
        if parent not in self._made:
            if not os.path.isdir(parent):
                os.makedirs(parent, exist_ok=True)
                self._fresh.add(parent)
            self._made.add(parent)
        partial = f"{path}.{uuid.uuid4().hex}.partial"
        try:
            write_file(partial, data)
            os.replace(partial, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(partial)
            raise

    def _window(self, index: Index) -> tuple[list[slice], tuple[int, ...]]:
        """Slices of every axis, and the shape of the selection with integer axes dropped."""
        index = index if isinstance(index, tuple) else (index,)
        index += (slice(None),) * (len(self.shape) - len(index))  # `a[:]`, `a[z]`: the rest whole
        window = []
        for i, n in zip(index, self.shape):
            if isinstance(i, slice):
                start, stop, step = i.indices(n)
                if step != 1:
                    raise ValueError("chunk files take contiguous windows only")
                window.append(slice(start, stop))
            else:
                window.append(slice(int(i), int(i) + 1))
        kept = tuple(w.stop - w.start for w, i in zip(window, index) if isinstance(i, slice))
        return window, kept

    def _parts(self, window: list[slice]):
        """(chunk coordinates, part of the chunk, part of the window) of every chunk under a window."""
        ranges = [
            range(w.start // c, (w.stop - 1) // c + 1) if w.stop > w.start else range(0)
            for w, c in zip(window, self.chunks)
        ]
        for coords in itertools.product(*ranges):
            lo = [max(w.start, k * c) for w, k, c in zip(window, coords, self.chunks)]
            hi = [min(w.stop, (k + 1) * c) for w, k, c in zip(window, coords, self.chunks)]
            in_chunk = tuple(slice(a - k * c, b - k * c) for a, b, k, c in zip(lo, hi, coords, self.chunks))
            in_window = tuple(slice(a - w.start, b - w.start) for a, b, w in zip(lo, hi, window))
            yield coords, in_chunk, in_window

    def __getitem__(self, index: Index) -> np.ndarray:
        window, kept = self._window(index)
        out = np.empty([w.stop - w.start for w in window], self.array.dtype)
        for coords, in_chunk, in_window in self._parts(window):
            out[in_window] = self.read_chunk(coords)[in_chunk]
        return out.reshape(kept)

    def __setitem__(self, index: Index, values) -> None:
        window, kept = self._window(index)
        values = np.broadcast_to(np.asarray(values), kept).reshape([w.stop - w.start for w in window])
        for coords, in_chunk, in_window in self._parts(window):
            part = values[in_window]
            if part.shape == self.chunks:  # the whole chunk: written as it is
                self.write_chunk(coords, part)
                continue
            covers = all(
                p.stop - p.start == min(c, n - k * c) for p, c, n, k in zip(in_chunk, self.chunks, self.shape, coords)
            )
            chunk = np.full(self.chunks, self.fill, self.dtype) if covers else self.read_chunk(coords)
            chunk[in_chunk] = part
            self.write_chunk(coords, chunk)
