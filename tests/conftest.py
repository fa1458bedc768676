import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sebre_ij.stores import write_slide
from sebre_ij.synth import CLASSES, synth_section

# the command line as a subprocess runs it
SEBRE = (sys.executable, "-m", "sebre_ij.cli")
SHARED = Path(os.environ.get("SEBRE_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")


def required(folder: Path, fix: str) -> Path:
    """`folder`, or a skip naming it and the `fix`, which is a failure when $CI is set (a runner
    must have the data)."""
    if not folder.is_dir():
        reason = f"{folder} not found: {fix}"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (required when CI is set)")
        pytest.skip(reason)
    return folder


def shared_set(name: str) -> Path:
    """The shared-data folder `name`: $SEBRE_DATA/name, else ../shared/data/name (`required`)."""
    return required(SHARED / name, f"set SEBRE_DATA to the folder holding {name}/")


# a light model's training flags, for tests that train one in seconds
TINY_TRAIN = ("--pixel-size", "16", "--tile-size", "128", "--overlap", "32", "--batch-size", "2")


@pytest.fixture(scope="session")
def ij_jar():
    """ij.jar; skipped locally without it, a failure under CI (a broken runner)."""
    from sebre_ij.imagej import ij_jar as find_jar

    try:
        return find_jar()
    except FileNotFoundError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"{exc} (required when CI is set)")
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def imagej(ij_jar):
    """The ij.IJ class of one headless JVM shared by the session (a JVM starts once per process)."""
    from sebre_ij.imagej import start_imagej

    return start_imagej(ij_jar, headless=True)


@pytest.fixture(scope="session")
def xvfb_run():
    """xvfb-run, for the ROI Manager (it needs a display); a failure under CI when missing."""
    path = shutil.which("xvfb-run")
    if path is None:
        reason = "xvfb-run not found (apt-get install xvfb): the ROI Manager needs a display"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (required when CI is set)")
        pytest.skip(reason)
    return path


@pytest.fixture(scope="session")
def trained_slide(tmp_path_factory):
    """A 2-section synthetic slide and a tiny model trained on it for 120 steps (40 left it finding
    nothing on some machines, with class-balanced tiles spread over 13 classes), through the CLI.
    Tests copy the slide (copy_slide) before writing into it."""
    work = tmp_path_factory.mktemp("trained")
    slide, model = work / "slide.zarr", work / "model.safetensors"
    cli = list(SEBRE)
    subprocess.run(
        [*cli, "synth", str(slide), "--sections", "2", "--size", "1024", "1536", "--pixel-size", "8", "--seed", "3"],
        check=True,
        capture_output=True,
        timeout=600,
    )
    subprocess.run(
        [
            *cli,
            "train",
            str(slide),
            "--out",
            str(model),
            "--steps",
            "120",
            *TINY_TRAIN,
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return slide, model


def copy_slide(slide, folder):
    """A private copy of a test slide."""
    target = folder / slide.name
    shutil.copytree(slide, target)
    return target


def oracle(truth):
    """A predictor that returns, for each tile, the true classes inside it (zero past the level's
    edges): stitching is then checked apart from any network."""

    def predict(tiles, read):
        for t in tiles:
            classes = np.zeros((t.size, t.size), np.uint8)
            y0, x0 = max(t.y, 0), max(t.x, 0)  # a tile centred on a section may start before the level
            window = truth[y0 : t.y + t.size, x0 : t.x + t.size]
            classes[y0 - t.y : y0 - t.y + window.shape[0], x0 - t.x : x0 - t.x + window.shape[1]] = window
            yield t, classes, np.ones(classes.shape, np.float32)

    return predict


def write_synth_set(root, n=3, shape=(96, 96)):
    """A shared-data set of `n` synthetic sections (3 of them: s0, s1 train, s2 validates)."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    sections = []
    for i in range(n):
        image, labels = synth_section(shape, rng)
        Image.fromarray(image.transpose(1, 2, 0)).save(root / "images" / f"s{i}.png")
        Image.fromarray(labels).save(root / "labels" / f"s{i}.png")
        sections.append({"image": f"images/s{i}.png", "labels": f"labels/s{i}.png", "pixel_size_um": 64.0})
    classes = [{"index": i, "name": name, "rgb": list(rgb)} for i, (name, rgb) in enumerate(CLASSES)]
    (root / "sections.json").write_text(json.dumps({"classes": classes, "sections": sections}))
    return root


@pytest.fixture(scope="module", params=["0.4", "0.5"])
def store(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(f"ngff{request.param}") / "slide.zarr"
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (3, 600, 800), dtype=np.uint8)
    labels = np.zeros((600, 800), np.uint8)
    labels[100:300, 200:500] = 1
    write_slide(path, image, labels, 2.0, ngff=request.param, chunk=128)
    return path, request.param, image


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
