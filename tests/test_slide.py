"""Reading OME-Zarr metadata: versions, axes, pixel sizes, channels, level choice."""

import numpy as np
import pytest
import zarr

from sebre_ij.errors import UserError
from sebre_ij.pixels import ChunkCache
from sebre_ij.slide import open_slide, pick_level
from sebre_ij.stores import write_slide


@pytest.fixture(scope="module", params=["0.4", "0.5"])
def store(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(f"ngff{request.param}") / "slide.zarr"
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (3, 600, 800), dtype=np.uint8)
    labels = np.zeros((600, 800), np.uint8)
    labels[100:300, 200:500] = 1
    write_slide(path, image, labels, 2.0, ngff=request.param, chunk=128)
    return path, request.param, image


def test_open_reads_levels_axes_and_pixel_sizes(store):
    path, version, image = store
    slide = open_slide(path)
    assert slide.version == version
    assert slide.zarr_format == (2 if version == "0.4" else 3)
    assert slide.axes == "cyx"
    assert slide.channels == ["R", "G", "B"]
    assert slide.yx_shape(0) == (600, 800)
    assert [slide.pixel_size(i) for i in range(len(slide.levels))] == [2.0 * 2**i for i in range(len(slide.levels))]
    assert slide.label_names() == ["truth"]
    np.testing.assert_array_equal(np.asarray(slide.plane(0)), image)
    np.testing.assert_array_equal(slide.plane(0, 0, slice(10, 500, 3), slice(None, None, 7)), image[:, 10:500:3, ::7])


def test_pick_level_nearest_in_log_scale(store):
    slide = open_slide(store[0])
    assert pick_level(slide, 2.0) == 0
    assert pick_level(slide, 7.0) == 2  # 8 is nearer than 4 in ratio
    assert pick_level(slide, 1000.0) == len(slide.levels) - 1


def test_zyx_plane_view(tmp_path):
    path = tmp_path / "z.zarr"
    root = zarr.open_group(path, mode="w", zarr_format=2)
    data = np.arange(2 * 40 * 50, dtype=np.uint16).reshape(2, 40, 50)
    root.create_array("0", data=data, chunks=(1, 20, 20))
    root.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": [{"name": "z", "type": "space"}, {"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
            "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 0.5, 0.5]}]}],
        }
    ]
    slide = open_slide(path)
    assert slide.n_planes == 2 and slide.channels == ["C0"]
    np.testing.assert_array_equal(np.asarray(slide.plane(0, z=1))[0], data[1])


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda p: p.mkdir(), "not a zarr store"),
        (lambda p: zarr.open_group(p, mode="w", zarr_format=2), "multiscales"),
    ],
)
def test_bad_stores_are_user_errors(tmp_path, make, words):
    path = tmp_path / "bad.zarr"
    make(path)
    with pytest.raises(UserError, match=words):
        open_slide(path)


def test_missing_path_is_user_error(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        open_slide(tmp_path / "nope.zarr")


def test_fsspec_url_reads_like_a_path(store):
    path, version, image = store
    slide = open_slide(f"file://{path}")
    assert slide.version == version and slide.label_names() == ["truth"]
    np.testing.assert_array_equal(np.asarray(slide.plane(1)), np.asarray(open_slide(path).plane(1)))


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
    windows += [
        (1, slice(0, 600), slice(790, 800)),
        (slice(None), slice(0, 600, 7), slice(3, 800, 5)),
    ]  # an int index; a stride
    for window in windows:
        np.testing.assert_array_equal(cache[window], image[window])
    assert len(cache.held) <= capacity
    if (
        capacity == 1000
    ):  # everything fits: the level's 5 x 7 chunks decoded about once (a read's box may hold some again)
        assert counting.chunks_read <= 2 * 35


def test_scales_are_read_in_their_axis_unit(tmp_path):
    from sebre_ij.stores import write_slide
    from sebre_ij.synth import synth_slide

    image, truth = synth_slide(1, (256, 256), 2.0, seed=1)
    for unit, scale in (("nanometer", 2000.0), ("millimeter", 0.002), ("micrometer", 2.0)):
        write_slide(tmp_path / f"{unit}.zarr", image, truth, 2.0, unit=unit, levels=2)
        slide = open_slide(tmp_path / f"{unit}.zarr")
        assert slide.levels[0].scale[-1] == pytest.approx(scale) and slide.units["x"] == unit
        assert slide.pixel_size(0) == pytest.approx(2.0) and slide.pixel_size(1) == pytest.approx(4.0)
    assert open_slide(tmp_path / "nanometer.zarr", pixel_size=5.0).pixel_size(1) == pytest.approx(10.0)


def test_a_unit_that_is_no_length_is_refused(tmp_path):
    from sebre_ij.stores import write_slide
    from sebre_ij.synth import synth_slide

    image, truth = synth_slide(1, (256, 256), 2.0, seed=1)
    store = tmp_path / "furlong.zarr"
    write_slide(store, image, truth, 2.0, levels=1)
    attrs = dict(zarr.open_group(str(store), mode="r+").attrs)
    attrs["multiscales"][0]["axes"][-1]["unit"] = "furlong"
    zarr.open_group(str(store), mode="r+").attrs.update(attrs)
    with pytest.raises(UserError, match=r"axis x has unit 'furlong', not a length NGFF names.*pixel_size=UM"):
        open_slide(store)
    assert open_slide(store, pixel_size=2.0).pixel_size(0) == pytest.approx(2.0)


@pytest.fixture
def http_store(tmp_path):
    """A slide served by a real `python -m http.server`, which the test stops and starts."""
    import socket
    import subprocess
    import sys
    import time

    from sebre_ij.stores import make_slide_store

    make_slide_store(tmp_path / "s.zarr", sections=1, size=(512, 512), pixel_size=8.0, seed=1)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    def start():
        server = subprocess.Popen(
            [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(100):
            with socket.socket() as client:
                if client.connect_ex(("127.0.0.1", port)) == 0:
                    return server
            time.sleep(0.05)
        raise RuntimeError("http.server did not start")

    servers = [start()]
    yield f"http://127.0.0.1:{port}/s.zarr", servers, start
    for server in servers:
        server.kill()
        server.wait()


def test_a_remote_store_that_drops_out_is_read_again_with_backoff(http_store, monkeypatch):
    import threading

    import sebre_ij.pixels as slide_module

    url, servers, start = http_store
    monkeypatch.setattr(slide_module, "READ_BACKOFF_S", 0.2)
    pixels = open_slide(url).pixels(0)
    whole = np.asarray(pixels[:, 0:64, 0:64])
    servers[0].kill()
    servers[0].wait()
    threading.Timer(1.0, lambda: servers.append(start())).start()  # back up after a second
    np.testing.assert_array_equal(pixels[:, 0:64, 0:64], whole)
    assert len(servers) == 2


def test_a_remote_store_that_stays_away_stops_the_run_in_one_line(http_store, monkeypatch):
    import time

    import sebre_ij.pixels as slide_module

    url, servers, _ = http_store
    monkeypatch.setattr(slide_module, "READ_BACKOFF_S", 0.05)
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


def test_a_command_on_a_store_that_does_not_answer_exits_2_in_one_line(http_store):
    from typer.testing import CliRunner

    from sebre_ij.cli import app

    url, servers, _ = http_store
    servers[0].kill()
    servers[0].wait()
    result = CliRunner().invoke(app, ["info", url])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert f"{url}: the store does not answer" in result.stderr and "check the connection" in result.stderr
