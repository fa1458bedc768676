"""A segment run killed (SIGKILL) mid-way and started again with the same command gives a layer
byte-identical to an uninterrupted run; other settings are refused, --overwrite starts over."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from sebre_ij.model import ModelCard, save_checkpoint
from sebre_ij.synth import CLASSES, make_slide_store, random_model


def layer_files(store):
    root = store / "labels" / "sebre"
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def segment_cmd(store, model):
    return [sys.executable, "-m", "sebre_ij.cli", "segment", str(store), "--model", str(model), "--min-score", "0", "--batch-size", "2"]


def progress_of(store):
    attrs = store / "labels" / "sebre" / ".zattrs"
    try:
        return json.loads(attrs.read_text()).get("sebre", {}).get("progress", {}).get("done", {}).get("0", 0)
    except (OSError, ValueError):
        return 0


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    work = tmp_path_factory.mktemp("resume")
    make_slide_store(work / "clean.zarr", sections=2, size=(1024, 1536), pixel_size=8.0, seed=4)
    names = [n for n, _ in CLASSES]
    card = ModelCard("tiny_fpn", names, [c for _, c in CLASSES], 16.0, ["R", "G", "B"], [0.8] * 3, [0.2] * 3, 64, 16)
    save_checkpoint(work / "m.safetensors", random_model(card, 1), card)  # random weights that find regions
    subprocess.run(segment_cmd(work / "clean.zarr", work / "m.safetensors"), check=True, capture_output=True, timeout=600)
    clean = layer_files(work / "clean.zarr")
    assert sum(not name.rsplit("/", 1)[-1].startswith(".") for name in clean) > 10, "the clean run wrote no label chunks"
    return work, clean


@pytest.mark.parametrize("kill_after_batches, flags", [(1, []), (7, ["--resume"]), (20, [])])
def test_killed_run_resumes_to_identical_layer(setup, tmp_path, kill_after_batches, flags):
    work, clean = setup
    store = tmp_path / "slide.zarr"
    shutil.copytree(work / "clean.zarr", store, ignore=shutil.ignore_patterns("labels"))
    shutil.copytree(work / "clean.zarr" / "labels" / "truth", store / "labels" / "truth")
    (store / "labels" / ".zattrs").write_text(json.dumps({"labels": ["truth"]}))
    proc = subprocess.Popen(segment_cmd(store, work / "m.safetensors"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while progress_of(store) < kill_after_batches and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 0 < progress_of(store), "the run was not killed mid-way"
    rerun = subprocess.run([*segment_cmd(store, work / "m.safetensors"), *flags], capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert "resumed" in rerun.stdout
    assert layer_files(store) == clean


def test_unfinished_layer_from_other_settings_is_refused(setup, tmp_path):
    work, _ = setup
    store = tmp_path / "slide.zarr"
    shutil.copytree(work / "clean.zarr", store)
    attrs = json.loads((store / "labels" / ".zattrs").read_text())
    (store / "labels" / ".zattrs").write_text(json.dumps({**attrs, "labels": ["truth"]}))  # as if killed at the end
    layer_attrs = store / "labels" / "sebre" / ".zattrs"
    meta = json.loads(layer_attrs.read_text())
    meta["sebre"]["progress"] = {"key": "another run", "done": {"0": 3}}
    layer_attrs.write_text(json.dumps(meta))
    proc = subprocess.run(segment_cmd(store, work / "m.safetensors"), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and "unfinished" in proc.stderr and "--overwrite" in proc.stderr
    ok = subprocess.run([*segment_cmd(store, work / "m.safetensors"), "--overwrite"], capture_output=True, text=True, timeout=600)
    assert ok.returncode == 0, ok.stderr


def test_resume_flag_needs_an_interrupted_run(setup, tmp_path):
    work, _ = setup
    finished = tmp_path / "finished.zarr"
    shutil.copytree(work / "clean.zarr", finished)
    before = layer_files(finished)
    proc = subprocess.run([*segment_cmd(finished, work / "m.safetensors"), "--resume"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and "not an interrupted run" in proc.stderr
    assert layer_files(finished) == before
    bare = tmp_path / "bare.zarr"
    shutil.copytree(work / "clean.zarr", bare, ignore=shutil.ignore_patterns("labels"))
    proc = subprocess.run([*segment_cmd(bare, work / "m.safetensors"), "--resume"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and "no label layer 'sebre' to resume" in proc.stderr
    assert not (bare / "labels").exists()  # nothing written
