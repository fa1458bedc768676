"""Bad input gets one line naming the file, the problem and the fix, exit code 2, and the inputs
stay byte for byte as they were (sha256 over every file's relative path and bytes)."""

import ctypes
import hashlib
import json
import os
import pickle
import shutil
import socket
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from conftest import SEBRE
from ome_zarr.format import FormatV04
from ome_zarr.writer import write_image
from PIL import Image
from roifile import ImagejRoi
from safetensors.torch import save_file
from typer.testing import CliRunner

from sebre_ij.checkpoint import save_checkpoint
from sebre_ij.cli import app
from sebre_ij.layer import create_layer
from sebre_ij.model import ModelCard, build_model
from sebre_ij.slide import open_slide
from sebre_ij.stores import make_slide_store
from sebre_ij.synth import CLASSES


def checksum(path: Path) -> str:
    """sha256 over every file under `path` (or of the file itself): relative path and bytes."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        digest.update(str(f.relative_to(path.parent if path.is_file() else path)).encode() + b"\0" + f.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A one-section 512 x 512 slide at 8 µm/px and a random tiny model at 16 µm/px (64 px tiles)."""
    work = tmp_path_factory.mktemp("bad_input")
    make_slide_store(work / "slide.zarr", sections=1, size=(512, 512), pixel_size=8.0, seed=1)
    card = ModelCard(
        "tiny_fpn",
        [n for n, _ in CLASSES],
        [c for _, c in CLASSES],
        16.0,
        ["R", "G", "B"],
        [0.8] * 3,
        [0.2] * 3,
        64,
        16,
    )
    torch.manual_seed(0)
    save_checkpoint(work / "model.safetensors", build_model(card), card)
    return work


def copy(base: Path, tmp: Path) -> Path:
    return Path(shutil.copytree(base / "slide.zarr", tmp / "slide.zarr"))


def segment(slide, base, *flags):
    return ["segment", str(slide), "--model", str(base / "model.safetensors"), *flags]


def edit_attrs(store: Path, change) -> None:
    attrs_file = store / ".zattrs"
    attrs = json.loads(attrs_file.read_text())
    change(attrs)
    attrs_file.write_text(json.dumps(attrs))


def write_image_store(path: Path, image: np.ndarray, axes: str = "cyx") -> Path:
    """An NGFF 0.4 image of any dtype and axes (no labels), two levels, 16 µm/px at level 0."""
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    scale = {a: 16.0 for a in "yx"} | {a: 1.0 for a in "tcz"}
    write_image(
        image,
        root,
        axes=axes,
        fmt=FormatV04(),
        scale_factors=(2,),
        scale={a: scale[a] for a in axes},
        axes_units={a: "micrometer" for a in axes if a in "zyx"},
        storage_options={"chunks": image.shape[:-2] + (64, 64)},
    )
    return path


def chunk_files(array_dir: Path) -> list[Path]:
    return sorted(p for p in array_dir.rglob("*") if p.is_file() and not p.name.startswith("."))


# --- the cases: each builds its inputs under tmp and returns (CLI args, the source to checksum, key words) ----


def not_a_zarr(tmp, base):
    folder = tmp / "scans"
    folder.mkdir()
    (folder / "notes.txt").write_text("not an image")
    return segment(folder, base), folder, ["scans", "not a zarr store", "OME-Zarr"]


def missing_path(tmp, base):
    return segment(tmp / "nowhere.zarr", base), tmp, ["nowhere.zarr", "no such file"]


def a_tiff_file(tmp, base):
    path = tmp / "slide.tif"
    path.write_bytes(b"II*\0" + bytes(64))
    return segment(path, base), path, ["slide.tif", "not a zarr store"]


def no_multiscales(tmp, base):
    store = copy(base, tmp)
    edit_attrs(store, lambda a: a.pop("multiscales"))
    return segment(store, base), store, ["slide.zarr", "multiscales"]


def unknown_version(tmp, base):
    store = copy(base, tmp)
    edit_attrs(store, lambda a: a["multiscales"][0].update(version="0.6"))
    return segment(store, base), store, ["slide.zarr", "version '0.6'", "convert"]


def missing_axes(tmp, base):
    store = copy(base, tmp)
    edit_attrs(store, lambda a: a["multiscales"][0].pop("axes"))
    return segment(store, base), store, ["slide.zarr", "axes 'missing'"]


def contradictory_axes(tmp, base):
    store = copy(base, tmp)
    edit_attrs(store, lambda a: a["multiscales"][0]["axes"].insert(1, {"name": "z", "type": "space"}))
    return segment(store, base), store, ["slide.zarr", "3 dimensions", "axes are 'czyx'"]


def repeated_axes(tmp, base):
    store = copy(base, tmp)
    edit_attrs(store, lambda a: a["multiscales"][0]["axes"][0].update(name="y"))
    return segment(store, base), store, ["slide.zarr", "axes 'yyx'"]


def time_series(tmp, base):
    image = np.zeros((2, 3, 1, 128, 128), np.uint8)
    store = write_image_store(tmp / "movie.zarr", image, "tczyx")
    return segment(store, base), store, ["movie.zarr", "time axis of length 2", "single"]


def float_with_nan(tmp, base):
    image = np.ones((3, 256, 256), np.float32)
    image[:, 100:140, 100:140] = 0.3
    image[:, 10:20, 10:20] = np.nan
    store = write_image_store(tmp / "nan.zarr", image)
    return segment(store, base), store, ["nan.zarr", "NaN or inf", "replace"]


def float_with_inf(tmp, base):
    image = np.ones((3, 256, 256), np.float32)
    image[:, 100:140, 100:140] = 0.3
    image[1, 50, 50] = np.inf
    store = write_image_store(tmp / "inf.zarr", image)
    return segment(store, base), store, ["inf.zarr", "NaN or inf"]


def blank_slide(tmp, base):
    store = write_image_store(tmp / "blank.zarr", np.zeros((3, 256, 256), np.uint8))
    return segment(store, base), store, ["blank.zarr", "no tissue found"]


def too_small_for_a_section(tmp, base):
    image = np.full((3, 12, 12), 230, np.uint8)
    image[:, 3:9, 2:10] = 90
    store = write_image_store(tmp / "tiny.zarr", image)
    return segment(store, base), store, ["tiny.zarr", "too small to hold a section", "tile"]


def wrong_channels(tmp, base):
    image = np.full((1, 256, 256), 230, np.uint8)
    image[:, 60:200, 60:200] = 90
    store = write_image_store(tmp / "grey.zarr", image)
    return segment(store, base), store, ["grey.zarr", "1 channel", "model expects 3"]


def corrupt_chunk(tmp, base):
    store = copy(base, tmp)
    chunk = chunk_files(store / "s0")[1]
    chunk.write_bytes(chunk.read_bytes()[: len(chunk.read_bytes()) // 2])
    return segment(store, base), store, ["slide.zarr", "'s0'", "corrupt or truncated"]


def existing_layer(tmp, base):
    store = copy(base, tmp)
    return segment(store, base, "--labels", "truth"), store, ["slide.zarr", "'truth' exists", "--overwrite"]


def bad_label_name(tmp, base):
    store = copy(base, tmp)
    return segment(store, base, "--labels", "../image"), store, ["'../image'", "not a valid path segment"]


def layer_locked(tmp, base):
    store = copy(base, tmp)
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": "2024-01-01T00:00:00"}
    (store / "labels" / ".sebre-lock-sebre").write_text(json.dumps(owner))
    return segment(store, base), store, [".sebre-lock-sebre", f"pid {os.getpid()}", "delete"]


def unfinished_layer_export(tmp, base):
    store = copy(base, tmp)
    slide = open_slide(store)
    create_layer(slide, "sebre", 1, run_key="killed")
    return (
        ["rois", str(store), "--labels", "sebre", "--out", str(tmp / "rois.zip")],
        store,
        ["'sebre'", "unfinished", "resume"],
    )


def unfinished_layer_evaluate(tmp, base):
    store = copy(base, tmp)
    create_layer(open_slide(store), "sebre", 1, run_key="killed")
    return (
        ["evaluate", str(store), str(store), "--pred-labels", "sebre", "--truth-labels", "truth"],
        store,
        ["'sebre'", "unfinished"],
    )


def bad_pixel_size(tmp, base):
    store = copy(base, tmp)
    return segment(store, base, "--pixel-size", "-3"), store, ["--pixel-size", "positive"]


def overlap_too_big(tmp, base):
    store = copy(base, tmp)
    return (
        segment(store, base, "--tile-size", "64", "--overlap", "64"),
        store,
        ["overlap 64", "smaller than the tile size"],
    )


def missing_roi_level(tmp, base):
    store = copy(base, tmp)
    return segment(store, base, "--roi-level", "7"), store, ["--roi-level 7", "levels 0 to 1"]


# --- checkpoints -------------------------------------------------------------------------------


def with_model(tmp, base, model: Path, words: list[str]):
    store = copy(base, tmp)
    return ["segment", str(store), "--model", str(model)], tmp, [model.name, *words]


def random_bytes_model(tmp, base):
    model = tmp / "weights.bin"
    model.write_bytes(os.urandom(256))
    return with_model(tmp, base, model, ["not a safetensors checkpoint", "sebre train"])


def safetensors_without_card(tmp, base):
    model = tmp / "other.safetensors"
    save_file({"w": torch.zeros(3)}, str(model))
    return with_model(tmp, base, model, ["without a sebre-ij model card"])


def card_of_other_version(tmp, base):
    model = tmp / "future.safetensors"
    card = json.loads(
        ModelCard("tiny_fpn", ["background", "a"], [(0, 0, 0), (1, 2, 3)], 16.0, ["R"], [0.5], [0.2]).to_json()
    )
    save_file(
        {"w": torch.zeros(3)},
        str(model),
        metadata={"sebre_card": json.dumps({**card, "format": "sebre-ij-checkpoint/9"})},
    )
    return with_model(tmp, base, model, ["sebre-ij-checkpoint/9", "not 'sebre-ij-checkpoint/1'"])


def card_with_bad_fields(tmp, base):
    model = tmp / "broken.safetensors"
    card = {"format": "sebre-ij-checkpoint/1", "architecture": "tiny_fpn", "classes": "cortex", "pixel_size_um": -1}
    save_file({"w": torch.zeros(3)}, str(model), metadata={"sebre_card": json.dumps(card)})
    return with_model(tmp, base, model, ["model card", "re-train"])


def weights_of_other_model(tmp, base):
    model = tmp / "mismatch.safetensors"
    card = ModelCard(
        "tiny_fpn", ["background", "a"], [(0, 0, 0), (1, 2, 3)], 16.0, ["R", "G", "B"], [0.5] * 3, [0.2] * 3
    )
    save_file({"w": torch.zeros(3)}, str(model), metadata={"sebre_card": card.to_json()})
    return with_model(tmp, base, model, ["weights do not fit", "re-train"])


class Payload:
    """Unpickling this runs `open(marker, "w")`: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def pickle_model(tmp, base):
    model = tmp / "evil.pt"
    model.write_bytes(pickle.dumps({"state_dict": Payload(tmp / "PWNED")}))
    return with_model(tmp, base, model, ["pickle", "safetensors", "run code"])


def torch_zip_model(tmp, base):
    model = tmp / "evil.pth"
    torch.save({"state_dict": Payload(tmp / "PWNED")}, model)
    return with_model(tmp, base, model, ["pickle", "safetensors"])


# --- RoiSet.zip for training --------------------------------------------------------------------


def roi_bytes(name: str = "cortex") -> bytes:
    roi = ImagejRoi.frompoints(np.array([[4.0, 4.0], [40.0, 6.0], [36.0, 40.0]]))
    roi.name = name
    return roi.tobytes()


def train_with(tmp, members: dict[str, bytes] | bytes, words: list[str], *flags):
    folder = tmp / "annotated"
    folder.mkdir()
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(folder / "section.png")
    if isinstance(members, bytes):
        (folder / "RoiSet.zip").write_bytes(members)
    else:
        with zipfile.ZipFile(folder / "RoiSet.zip", "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data in members.items():
                zf.writestr(name, data)
    args = [
        "train",
        str(folder / "section.png"),
        "--rois",
        str(folder / "RoiSet.zip"),
        "--out",
        str(tmp / "out.safetensors"),
        "--pixel-size-in",
        "16",
        "--steps",
        "1",
        *flags,
    ]
    return args, folder, ["RoiSet.zip", *words]


def roiset_with_other_files(tmp, base):
    return train_with(
        tmp, {"cortex.roi": roi_bytes(), "macro.ijm": b"run('Quit');"}, ["'macro.ijm'", "not an ImageJ .roi"]
    )


def roiset_with_traversal(tmp, base):
    return train_with(tmp, {"../../evil.roi": roi_bytes()}, ["unsafe member name", "../../evil.roi"])


def roiset_zip_bomb(tmp, base):
    return train_with(tmp, {"cortex.roi": roi_bytes() + bytes(40 * 2**20)}, ["zip bomb", "limit"])


def roiset_not_a_zip(tmp, base):
    return train_with(tmp, b"PK\3\4 this is not really a zip", ["not a readable zip"])


def roiset_garbage_member(tmp, base):
    return train_with(tmp, {"cortex.roi": b"Iout" + bytes(10)}, ["'cortex.roi'", "not a valid ImageJ ROI"])


def roi_names_without_class(tmp, base):
    return train_with(tmp, {"0001-0002.roi": roi_bytes("0001-0002")}, ["'0001-0002'", "names no class", "--class-map"])


def roi_names_not_in_class_map(tmp, base):
    (tmp / "map.json").write_text(json.dumps({"hippocampus": "hippocampus"}))
    return train_with(
        tmp, {"cortex.roi": roi_bytes()}, ["'cortex'", "not in the class map"], "--class-map", str(tmp / "map.json")
    )


CASES = [
    not_a_zarr,
    missing_path,
    a_tiff_file,
    no_multiscales,
    unknown_version,
    missing_axes,
    contradictory_axes,
    repeated_axes,
    time_series,
    float_with_nan,
    float_with_inf,
    blank_slide,
    too_small_for_a_section,
    wrong_channels,
    corrupt_chunk,
    existing_layer,
    bad_label_name,
    layer_locked,
    unfinished_layer_export,
    unfinished_layer_evaluate,
    bad_pixel_size,
    overlap_too_big,
    missing_roi_level,
    random_bytes_model,
    safetensors_without_card,
    card_of_other_version,
    card_with_bad_fields,
    weights_of_other_model,
    pickle_model,
    torch_zip_model,
    roiset_with_other_files,
    roiset_with_traversal,
    roiset_zip_bomb,
    roiset_not_a_zip,
    roiset_garbage_member,
    roi_names_without_class,
    roi_names_not_in_class_map,
]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(case, base, tmp_path):
    args, source, words = case(tmp_path, base)
    before = checksum(source)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, (result.output, result.exception)
    message = result.stderr.strip()
    assert message.startswith("sebre: error: ") and "\n" not in message, message
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    assert "Traceback" not in result.output
    assert checksum(source) == before
    assert not (tmp_path / "PWNED").exists(), "a checkpoint ran code"
    assert not (tmp_path / "out.safetensors").exists() and not (tmp_path / "rois.zip").exists()


def root_obeys_permissions() -> None:
    """For a subprocess of root: drop the capabilities that let root write anywhere (CAP_DAC_OVERRIDE,
    CAP_DAC_READ_SEARCH) from its bounding set, so file permissions apply to it as to anyone."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):
        if libc.prctl(24, cap, 0, 0, 0):  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_read_only_store_is_refused_before_anything_runs(base, tmp_path):
    store = copy(base, tmp_path)
    paths = [store, *store.rglob("*")]
    for p in paths:
        os.chmod(p, 0o555 if p.is_dir() else 0o444)
    try:
        before = checksum(store)
        cmd = [*SEBRE, *segment(store, base)]
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=300,
            preexec_fn=root_obeys_permissions if os.geteuid() == 0 else None,
        )
        assert proc.returncode == 2, proc.stderr
        assert "slide.zarr" in proc.stderr and "read-only" in proc.stderr and "copy the slide" in proc.stderr
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
        assert checksum(store) == before
    finally:
        for p in paths:
            os.chmod(p, 0o755)


def test_corrupt_chunk_found_mid_run_keeps_a_resumable_layer(base, tmp_path):
    """A chunk of the inference level that cannot be decoded stops the run with one line; the image is
    untouched, the layer stays unfinished (readers refuse it), and once the chunk is restored the same
    command resumes and finishes."""
    store = copy(base, tmp_path)
    chunk = chunk_files(store / "s1")[0]
    good = chunk.read_bytes()
    image_before = {p: p.read_bytes() for p in store.rglob("*") if p.is_file() and "labels" not in p.parts}
    chunk.write_bytes(good[:7])
    result = CliRunner().invoke(app, segment(store, base, "--min-score", "0"))
    assert result.exit_code == 2, result.output
    assert "'s1'" in result.stderr and "corrupt or truncated" in result.stderr and "resume" in result.stderr
    chunk.write_bytes(good)
    assert {p: p.read_bytes() for p in image_before} == image_before
    assert open_slide(store).label_names() == ["truth"]
    result = CliRunner().invoke(app, segment(store, base, "--min-score", "0"))
    assert result.exit_code == 0, result.output
    assert open_slide(store).label_names() == ["truth", "sebre"]


def test_zip_limits_hold_whatever_the_directory_says(tmp_path):
    """Member count and declared total size are capped before anything is inflated."""
    from sebre_ij import rois

    path = tmp_path / "many.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(5):
            zf.writestr(f"r{i}.roi", roi_bytes())
    with pytest.raises(ValueError, match="5 members, over the limit of 4"):
        rois.read_roiset(path, max_members=4)
    with pytest.raises(ValueError, match="zip bomb"):
        rois.read_roiset(path, max_total_bytes=3 * len(roi_bytes()))
    assert len(rois.read_roiset(path)) == 5
    assert not any(p.suffix == ".roi" for p in tmp_path.rglob("*")), "a member was extracted to disk"
