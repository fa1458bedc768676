"""A level's pixels, read safely: a chunk that does not decode or holds NaN is one line naming the
level and the window; a remote store that drops out is read again with backoff; tiles that overlap
read through a cache of the chunks they share.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from collections import OrderedDict

import numpy as np
import zarr

from .chunkfiles import chunk_files
from .errors import UserError

log = logging.getLogger(__name__)


def strided(index) -> bool:
    """Does an index step over pixels (a level read at a stride)?"""
    return any(
        isinstance(i, slice) and i.step not in (None, 1) for i in (index if isinstance(index, tuple) else (index,))
    )


READ_TRIES = 6  # reads of a remote store, before the run stops: a minute of waiting in all


READ_BACKOFF_S = 1.0  # the first wait; each next one doubles


def is_remote(url: str) -> bool:
    return "://" in url and not url.startswith("file://")


def is_transient(exc: Exception) -> bool:
    """A failure that may pass (the connection, a timeout, the server's own error), not a missing or
    undecodable chunk."""
    if isinstance(exc, FileNotFoundError):
        return False
    return isinstance(exc, (ConnectionError, TimeoutError)) or type(exc).__module__.split(".")[0] in (
        "aiohttp",
        "fsspec",
    )


class Pixels:
    """A level's zarr array that answers unreadable input with one line naming the level and the window:
    a chunk that does not decode (truncated, corrupt), or float pixels that are NaN or infinite, which
    would otherwise pass silently as black and be taken for tissue. Windows are read as chunk files
    where the array allows (chunkfiles.py); reads with a step, which may skip chunks, go to zarr."""

    def __init__(self, url: str, path: str, array: zarr.Array):
        self.url, self.path, self.array, self.files = url, path, array, chunk_files(array)
        self.shape, self.dtype, self.chunks, self.ndim = array.shape, array.dtype, array.chunks, array.ndim

    def __getitem__(self, index) -> np.ndarray:
        for attempt in range(READ_TRIES):
            try:
                data = np.asarray((self.array if strided(index) or self.files is None else self.files)[index])
                break
            except Exception as exc:  # codecs and stores raise many types for a bad chunk
                if not (is_remote(self.url) and is_transient(exc)):
                    raise UserError(
                        f"{self.url}: cannot read level {self.path!r} at {_index_text(index)} "
                        f"({type(exc).__name__}: {exc}); a chunk there is corrupt or truncated: "
                        "restore it or convert the slide again"
                    ) from exc
                if attempt + 1 == READ_TRIES:
                    raise UserError(
                        f"{self.url}: reading level {self.path!r} at {_index_text(index)} failed {READ_TRIES} times "
                        f"({type(exc).__name__}: {exc}); the store stopped answering: check the connection to it, "
                        "then run the same command to resume"
                    ) from exc
                log.warning("%s: reading level %r failed (%s); trying again", self.url, self.path, exc)
                time.sleep(READ_BACKOFF_S * 2**attempt)
        if data.dtype.kind == "f" and not np.isfinite(data).all():
            raise UserError(
                f"{self.url}: level {self.path!r} has NaN or inf pixels at {_index_text(index)}; "
                "replace them (for example with the glass value, numpy.nan_to_num) "
                "and write the slide again"
            )
        return data


class ChunkCache:
    """A level read through the chunks it decoded last. Tiles overlap and each covers parts of up to
    four chunks: windows read straight from zarr decode every chunk several times over, each time at
    zarr's full decoding cost. At most `max_bytes` of chunks are held, the least recently used
    dropped first. Reads with a step go straight to the level."""

    def __init__(self, pixels: Pixels, max_bytes: int = 64 << 20):
        self.pixels, self.shape, self.dtype, self.chunks = pixels, pixels.shape, pixels.dtype, pixels.chunks
        self.capacity = max(1, max_bytes // (math.prod(self.chunks) * np.dtype(self.dtype).itemsize))
        self.held: OrderedDict[tuple[int, ...], np.ndarray] = OrderedDict()
        self.lock = threading.Lock()

    def __getitem__(self, index: tuple) -> np.ndarray:
        if strided(index):
            return self.pixels[index]
        spans = [
            (i, i + 1) if isinstance(i, int) else (i.start or 0, n if i.stop is None else min(i.stop, n))
            for i, n in zip(index, self.shape)
        ]
        keys = list(itertools.product(*[range(lo // c, (hi - 1) // c + 1) for (lo, hi), c in zip(spans, self.chunks)]))
        out = np.empty([hi - lo for lo, hi in spans], self.dtype)
        with self.lock:
            missing = [key for key in keys if key not in self.held]
            if missing:
                self._fetch(missing)
            for key in keys:
                self.held.move_to_end(key)
                part = [slice(max(lo, k * c), min(hi, (k + 1) * c)) for (lo, hi), k, c in zip(spans, key, self.chunks)]
                out[tuple(slice(p.start - lo, p.stop - lo) for p, (lo, _) in zip(part, spans))] = self.held[key][
                    tuple(slice(p.start - k * c, p.stop - k * c) for p, k, c in zip(part, key, self.chunks))
                ]
            while len(self.held) > self.capacity:
                self.held.popitem(last=False)
        return out[tuple(0 if isinstance(i, int) else slice(None) for i in index)]

    def _fetch(self, keys: list[tuple[int, ...]]) -> None:
        """Read the chunks' bounding box in one zarr call, however many chunks, and keep each of its chunks."""
        lo = [min(axis) for axis in zip(*keys)]
        hi = [max(axis) + 1 for axis in zip(*keys)]
        box = self.pixels[tuple(slice(a * c, min(b * c, n)) for a, b, c, n in zip(lo, hi, self.chunks, self.shape))]
        for key in itertools.product(*map(range, lo, hi)):
            self.held[key] = box[
                tuple(slice((k - a) * c, (k - a + 1) * c) for k, a, c in zip(key, lo, self.chunks))
            ].copy()


def _index_text(index) -> str:
    """An index as the user reads it: [0:3, 256:512, 0:256]."""
    parts = index if isinstance(index, tuple) else (index,)
    return (
        "["
        + ", ".join(
            f"{p.start or 0}:{'' if p.stop is None else p.stop}" if isinstance(p, slice) else str(p) for p in parts
        )
        + "]"
    )
