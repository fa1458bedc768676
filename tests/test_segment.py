"""segment.py and preflight.py: options checked before anything is read or written, the inputs a
run works from, what a killed run must share to be resumed, and the result of a whole call."""

import numpy as np
import pytest
from conftest import SEBRE

from sebre_ij.checkpoint import save_checkpoint
from sebre_ij.errors import UserError
from sebre_ij.exports import Exports
from sebre_ij.model import ModelCard, random_model
from sebre_ij.model_input import LUMINANCE
from sebre_ij.preflight import SegmentOptions, open_inputs, run_key, run_settings
from sebre_ij.segment import segment
from sebre_ij.slide import open_slide
from sebre_ij.stores import make_slide_store
from sebre_ij.synth import CLASSES

NAMES = [n for n, _ in CLASSES]
COLORS = [c for _, c in CLASSES]


@pytest.fixture(scope="module")
def slide_and_models(tmp_path_factory):
    """A 2-section RGB slide, a 3-channel model and a luminance model (random weights that find regions)."""
    work = tmp_path_factory.mktemp("segment")
    make_slide_store(work / "slide.zarr", sections=2, size=(1024, 1536), pixel_size=8.0, seed=5)
    rgb = ModelCard("tiny_fpn", NAMES, COLORS, 16.0, list("RGB"), [0.8] * 3, [0.2] * 3, 64, 16)
    grey = ModelCard("tiny_fpn", NAMES, COLORS, 16.0, LUMINANCE, [0.8], [0.2], 64, 16, input="luminance")
    for name, card in (("rgb", rgb), ("grey", grey)):
        save_checkpoint(work / f"{name}.safetensors", random_model(card, 1), card)
    return work


def files(folder):
    return sorted(p.relative_to(folder) for p in folder.rglob("*"))


@pytest.mark.parametrize(
    "options, words",
    [
        (SegmentOptions(resume=True, overwrite=True), "resume=True and overwrite=True contradict"),
        (SegmentOptions(mode="cells"), "mode='cells' is not one of region, instance"),
        (SegmentOptions(batch_size=0), "batch_size=0"),
        (SegmentOptions(labels="../image"), "not a valid path segment"),
    ],
)
def test_bad_options_are_refused_by_parameter_name_before_anything_is_written(slide_and_models, options, words):
    slide = slide_and_models / "slide.zarr"
    before = files(slide)
    with pytest.raises(UserError, match=words) as caught:
        segment(slide, slide_and_models / "rgb.safetensors", options)
    assert "--" not in str(caught.value)  # the library names parameters; the command line says flags
    assert files(slide) == before


def test_inputs_hold_the_level_the_tissue_and_the_batch(slide_and_models):
    inputs = open_inputs(
        slide_and_models / "slide.zarr", slide_and_models / "rgb.safetensors", SegmentOptions(), Exports()
    )
    slide = open_slide(slide_and_models / "slide.zarr")
    assert slide.pixel_size(inputs.level) == pytest.approx(16.0) and inputs.factor == 1.0
    assert inputs.batch_size == 4 and len(inputs.planes) == 1 and inputs.planes[0].sections.count == 2
    with pytest.raises(UserError, match=r"roi_level=9 does not exist"):
        open_inputs(
            slide_and_models / "slide.zarr",
            slide_and_models / "rgb.safetensors",
            SegmentOptions(),
            Exports(roi_level=9),
        )


def test_a_killed_run_resumes_only_with_the_same_model_bytes_and_settings(slide_and_models, tmp_path):
    inputs = open_inputs(
        slide_and_models / "slide.zarr", slide_and_models / "rgb.safetensors", SegmentOptions(), Exports()
    )
    settings = run_settings(inputs, SegmentOptions())
    key = run_key(slide_and_models / "rgb.safetensors", settings)
    assert run_key(slide_and_models / "rgb.safetensors", dict(settings)) == key
    assert run_key(slide_and_models / "rgb.safetensors", run_settings(inputs, SegmentOptions(tta=True))) != key
    other = tmp_path / "other.safetensors"
    other.write_bytes((slide_and_models / "rgb.safetensors").read_bytes() + b" ")
    assert run_key(other, settings) != key


def test_a_luminance_model_segments_a_slide_of_any_channels(slide_and_models, tmp_path):
    """The RGB slide through the one-channel model; the RGB model refuses nothing it can read."""
    import shutil

    store = tmp_path / "slide.zarr"
    shutil.copytree(slide_and_models / "slide.zarr", store)
    result = segment(
        store,
        slide_and_models / "grey.safetensors",
        SegmentOptions(min_score=0.0, progress=False),
        Exports(rois=tmp_path / "RoiSet.zip"),
    )
    assert result.sections == 2 and result.tiles > 4 and result.regions
    assert {r["section"] for r in result.regions} == {1, 2}
    assert result.outputs == {"rois": str(tmp_path / "RoiSet.zip")} and (tmp_path / "RoiSet.zip").stat().st_size > 0
    assert "sebre" in open_slide(store).label_names()
    values = np.array([r["label-value"] for r in result.regions])
    assert (values // 100 == [r["section"] for r in result.regions]).all()


def label_chunks(store, name):
    """Every chunk file of a label layer's arrays (not its metadata), by path."""
    root = store / "labels" / name
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.startswith((".z", "zarr.json"))
    }


def test_slides_in_nanometres_and_millimetres_give_the_labels_of_micrometres(slide_and_models, tmp_path):
    from sebre_ij.stores import write_slide
    from sebre_ij.synth import synth_slide

    image, truth = synth_slide(2, (1024, 1536), 8.0, seed=5)
    found = {}
    for unit in ("micrometer", "nanometer", "millimeter"):
        store = tmp_path / f"{unit}.zarr"
        write_slide(store, image, truth, 8.0, unit=unit)
        assert open_slide(store).pixel_size(0) == pytest.approx(8.0)
        segment(store, slide_and_models / "rgb.safetensors", SegmentOptions(min_score=0.0, progress=False))
        found[unit] = label_chunks(store, "sebre")
        axes = open_slide(store).group["labels/sebre"].attrs["multiscales"][0]["axes"]
        assert [a.get("unit") for a in axes] == [unit, unit]  # the layer's scales are the image's, in its unit
    assert len(found["micrometer"]) > 4
    assert found["nanometer"] == found["micrometer"] == found["millimeter"]


def test_an_absurd_pixel_size_is_refused_at_once_naming_what_was_found(slide_and_models, tmp_path):
    """Nanometres written as micrometres: 8000 µm/px for 8 µm/px, 500x the model's; refused in
    seconds before anything is written, with pixel_size= as the fix."""
    import time

    from sebre_ij.stores import write_slide
    from sebre_ij.synth import synth_slide

    image, truth = synth_slide(2, (1024, 1536), 8.0, seed=5)
    store = tmp_path / "wrong.zarr"
    write_slide(store, image, truth, 8000.0)
    before = files(store)
    started = time.perf_counter()
    with pytest.raises(UserError, match=r"level 0 is 8000 µm/px by its metadata \(micrometer\), 500x .*pixel_size=UM"):
        segment(store, slide_and_models / "rgb.safetensors", SegmentOptions(progress=False))
    assert time.perf_counter() - started < 10 and files(store) == before
    result = segment(store, slide_and_models / "rgb.safetensors", SegmentOptions(pixel_size=8.0, progress=False))
    assert result.tiles > 4


@pytest.mark.parametrize(
    "code, words",
    [
        (28, "the disk is full"),
        (122, "the disk quota is used up"),
        (30, "the file system became read-only"),
        (5, "the disk reported an input/output error"),
    ],
)
def test_every_refused_write_is_one_line_naming_the_store_and_the_fix(slide_and_models, code, words):
    from sebre_ij.segment import refused_writes

    slide = open_slide(slide_and_models / "slide.zarr")
    with pytest.raises(UserError, match=rf"slide.zarr: {words} while writing labels/sebre \(/x/y\); free space"):
        with refused_writes(slide, "sebre"):
            raise OSError(code, "refused", "/x/y")
    with pytest.raises(PermissionError):  # not a fault of the disk: left to the command line's own handling
        with refused_writes(slide, "sebre"):
            raise PermissionError(13, "denied")


DOCUMENTED_PEAK_MB = 1000  # README's table: tiles of 256 px in batches of 4 (benchmarks/bench_memory.py)


@pytest.fixture
def memory_cgroup():
    """A cgroup (v1 memory controller) of this test's own, removed after; a failure under CI when
    the machine has none to give, else a skip."""
    import os
    from pathlib import Path

    root = Path("/sys/fs/cgroup/memory")
    group = root / f"sebre-test-{os.getpid()}"
    try:
        group.mkdir()
    except OSError as exc:
        reason = f"no memory cgroup can be made here ({exc}): run as root on a cgroup v1 machine"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    yield group
    group.rmdir()


def test_a_run_capped_at_twice_the_documented_peak_completes(slide_and_models, tmp_path, memory_cgroup):
    import os
    import shutil
    import subprocess

    store = tmp_path / "slide.zarr"
    shutil.copytree(slide_and_models / "slide.zarr", store)
    limit = 2 * DOCUMENTED_PEAK_MB << 20
    (memory_cgroup / "memory.limit_in_bytes").write_text(str(limit))
    cmd = [
        *SEBRE,
        "segment",
        str(store),
        "--model",
        str(slide_and_models / "rgb.safetensors"),
        "--batch-size",
        "4",
        "--min-score",
        "0",
    ]
    done = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=lambda: (memory_cgroup / "cgroup.procs").write_text(str(os.getpid())),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    used = int((memory_cgroup / "memory.max_usage_in_bytes").read_text())
    assert 0 < used <= limit and int((memory_cgroup / "memory.failcnt").read_text()) == 0


def test_scanner_black_around_the_tissue_changes_no_label(slide_and_models, tmp_path):
    """A mosaic scanner's black outside its scan regions (every channel 0, here the glass below and
    right of the sections) is glass: the same sections, no labels there, the tissue's labels kept."""
    from sebre_ij.evaluate import class_plane
    from sebre_ij.stores import write_slide
    from sebre_ij.synth import synth_slide

    image, truth = synth_slide(2, (1024, 1536), 8.0, seed=5)
    rows, cols = np.flatnonzero((truth > 0).any(axis=1)), np.flatnonzero((truth > 0).any(axis=0))
    black = image.copy()
    black[:, rows[-1] + 20 :, :] = 0
    black[:, :, cols[-1] + 20 :] = 0
    assert (~black.any(axis=0)).mean() > 0.1
    labels = {}
    for name, picture in (("glass", image), ("black", black)):
        store = tmp_path / f"{name}.zarr"
        write_slide(store, picture, truth, 8.0)
        result = segment(store, slide_and_models / "grey.safetensors", SegmentOptions(min_score=0.0, progress=False))
        assert result.sections == 2
        labels[name] = class_plane(open_slide(store), "sebre", 0)
    assert not labels["black"][~black.any(axis=0)].any()
    assert np.mean(labels["black"] == labels["glass"]) > 0.99
