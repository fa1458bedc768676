"""pixels.py: a level's pixels read through a chunk cache that gives the same windows as the level
itself, and a remote store (a real http.server, stopped and started) read again with backoff, or
given up on in one line."""

import numpy as np
import pytest

from sebre_ij.errors import UserError
from sebre_ij.pixels import ChunkCache
from sebre_ij.slide import open_slide


class CountingPixels:
    """A level that counts the chunks read through it."""

    def __init__(self, pixels):
        self.pixels, self.shape, self.dtype, self.chunks, self.chunks_read = (
            pixels,
            pixels.shape,
            pixels.dtype,
            pixels.chunks,
            0,
        )

    def __getitem__(self, index):
        data = self.pixels[index]
        if all(not isinstance(i, slice) or i.step in (None, 1) for i in index):
            self.chunks_read += int(np.prod([-(-n // c) for n, c in zip(np.shape(data), self.chunks)]))
        return data


@pytest.mark.parametrize("capacity", [1, 4, 1000])
def test_chunk_cache_reads_the_same_windows_decoding_chunks_about_once_while_they_fit(store, capacity):
    path, _, image = store
    slide = open_slide(path)
    pixels = slide.pixels(0)
    counting = CountingPixels(pixels)
    cache = ChunkCache(counting, max_bytes=capacity * 3 * 128 * 128)
    rng = np.random.default_rng(1)
    windows = [
        (slice(None), slice(y, y + 200), slice(x, x + 150))
        for y, x in zip(rng.integers(0, 400, 40), rng.integers(0, 650, 40))
    ]
    windows += [(1, slice(0, 600), slice(790, 800)), (slice(None), slice(0, 600, 7), slice(3, 800, 5))]  # int; stride
    for window in windows:
        np.testing.assert_array_equal(cache[window], image[window])
    assert len(cache.held) <= capacity
    # everything fits: the level's 5 x 7 chunks decoded about once (a read's box may hold some again)
    if capacity == 1000:
        assert counting.chunks_read <= 2 * 35


def test_a_remote_store_that_drops_out_is_read_again_with_backoff(http_store, monkeypatch):
    import threading

    import sebre_ij.pixels as pixels_module

    url, servers, start = http_store
    monkeypatch.setattr(pixels_module, "READ_BACKOFF_S", 0.2)
    pixels = open_slide(url).pixels(0)
    whole = np.asarray(pixels[:, 0:64, 0:64])
    servers[0].kill()
    servers[0].wait()
    threading.Timer(1.0, lambda: servers.append(start())).start()  # back up after a second
    np.testing.assert_array_equal(pixels[:, 0:64, 0:64], whole)
    assert len(servers) == 2


def test_a_remote_store_that_stays_away_stops_the_run_in_one_line(http_store, monkeypatch):
    import time

    import sebre_ij.pixels as pixels_module

    url, servers, _ = http_store
    monkeypatch.setattr(pixels_module, "READ_BACKOFF_S", 0.05)
    pixels = open_slide(url).pixels(0)
    servers[0].kill()
    servers[0].wait()
    started = time.monotonic()
    with pytest.raises(
        UserError,
        match=rf"{url}: reading level 's0' at \[0:3, 128:256, 0:64\] failed 6 times .*"
        r"check the connection to it, then run the same command to resume",
    ):
        pixels[0:3, 128:256, 0:64]
    assert time.monotonic() - started < 30
