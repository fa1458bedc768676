"""A segment run killed (SIGKILL) mid-way and started again with the same command gives a layer
byte-identical to an uninterrupted run; other settings are refused, --overwrite starts over. Runs
on different label names share a store; a second run on the same name is refused while the first
holds its lock."""

import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import SEBRE
from typer.testing import CliRunner

from sebre_ij.checkpoint import save_checkpoint
from sebre_ij.cli import app
from sebre_ij.model import ModelCard, random_model
from sebre_ij.stores import make_slide_store
from sebre_ij.synth import CLASSES


def layer_files(store, name="sebre", chunks_only=False):
    root = store / "labels" / name
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not (chunks_only and p.name.startswith("."))
    }


def segment_cmd(store, model, name="sebre"):
    return [
        *SEBRE,
        "segment",
        str(store),
        "--model",
        str(model),
        "--min-score",
        "0",
        "--batch-size",
        "2",
        "--labels",
        name,
    ]


def progress_of(store, name="sebre"):
    attrs = store / "labels" / name / ".zattrs"
    try:
        return json.loads(attrs.read_text()).get("sebre", {}).get("progress", {}).get("done", {}).get("0", 0)
    except (OSError, ValueError):
        return 0


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A clean run, and the progress values it went through: a chunk is written when its last
    tile is, so progress moves in steps of several batches."""
    work = tmp_path_factory.mktemp("resume")
    # chunks of 32 px under cores of 48: a row of chunks is written as a row of tiles ends, so progress moves often
    make_slide_store(work / "clean.zarr", sections=2, size=(768, 1024), pixel_size=8.0, seed=4, chunk=32)  # 24 tiles
    names = [n for n, _ in CLASSES]
    card = ModelCard("tiny_fpn", names, [c for _, c in CLASSES], 16.0, ["R", "G", "B"], [0.8] * 3, [0.2] * 3, 64, 16)
    save_checkpoint(work / "m.safetensors", random_model(card, 1), card)  # random weights that find regions
    proc = subprocess.Popen(
        segment_cmd(work / "clean.zarr", work / "m.safetensors"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen = set()
    while proc.poll() is None:
        seen.add(progress_of(work / "clean.zarr"))
        time.sleep(0.005)
    out, err = proc.communicate()
    assert proc.returncode == 0, err
    batches = -(-int(re.search(r"(\d+) tiles", out)[1]) // 2)
    clean = layer_files(work / "clean.zarr")
    assert sum(not name.rsplit("/", 1)[-1].startswith(".") for name in clean) > 3, "the clean run wrote no label chunks"
    steps = sorted(v for v in seen if 0 < v < batches)
    assert len(steps) >= KILLS, (
        f"progress went through {sorted(seen)} of {batches} batches: too few steps to kill the run at"
    )
    return work, clean, batches, steps


def fresh_copy(work, tmp_path):
    """The clean slide with its truth layer and without the segmented one."""
    store = tmp_path / "slide.zarr"
    shutil.copytree(
        work / "clean.zarr", store, ignore=lambda folder, names: ["sebre"] if folder.endswith("labels") else []
    )
    (store / "labels" / ".zattrs").write_text(json.dumps({"labels": ["truth"]}))
    return store


def wait_for(condition, proc, seconds=300):
    deadline = time.monotonic() + seconds
    while not condition() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)


KILLS = 3  # kill points drawn (seeded) from the clean run's batches


@pytest.mark.parametrize("draw", range(KILLS))
def test_killed_run_resumes_to_identical_layer(setup, tmp_path, draw):
    work, clean, batches, steps = setup
    kill_after = random.Random(7).sample(steps, KILLS)[draw]
    store = fresh_copy(work, tmp_path)
    proc = subprocess.Popen(
        segment_cmd(store, work / "m.safetensors"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_for(lambda: progress_of(store) >= kill_after, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 0 < progress_of(store) < batches, "the run was not killed mid-way"
    assert (store / "labels" / ".sebre-lock-sebre").exists(), "the killed run's lock is left behind"
    assert "sebre" not in listed(store), "an unfinished layer is listed"
    rerun = subprocess.run(
        [*segment_cmd(store, work / "m.safetensors"), *(["--resume"] if draw % 2 else [])],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert rerun.returncode == 0, rerun.stderr
    assert "resumed" in rerun.stdout
    assert layer_files(store) == clean
    assert not (store / "labels" / ".sebre-lock-sebre").exists(), "the dead run's lock was taken over and released"


@pytest.fixture(scope="module")
def small(setup, tmp_path_factory):
    """A 12-tile slide for runs that must finish side by side."""
    path = tmp_path_factory.mktemp("small") / "slide.zarr"
    make_slide_store(path, sections=1, size=(320, 448), pixel_size=8.0, seed=2)
    return path, setup[0] / "m.safetensors"


def listed(store):
    return json.loads((store / "labels" / ".zattrs").read_text())["labels"]


def in_process(cmd):
    """The same command run in this process (torch is loaded already: no start-up cost)."""
    return CliRunner().invoke(app, cmd[cmd.index("segment") :])


def test_runs_on_two_names_share_a_store(small, tmp_path):
    store, model = Path(shutil.copytree(small[0], tmp_path / "slide.zarr")), small[1]
    left = subprocess.Popen(
        segment_cmd(store, model, "left"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    right = in_process(segment_cmd(store, model, "right"))  # while the other process runs
    assert right.exit_code == 0, right.output
    assert left.wait(timeout=600) == 0, left.stderr.read()
    assert sorted(listed(store)) == ["left", "right", "truth"]
    assert layer_files(store, "left", chunks_only=True) == layer_files(store, "right", chunks_only=True)
    assert not list((store / "labels").glob(".sebre-lock*"))


def test_second_run_on_a_name_is_refused_while_the_first_holds_it(small, tmp_path):
    store, model = Path(shutil.copytree(small[0], tmp_path / "slide.zarr")), small[1]
    first = subprocess.Popen(segment_cmd(store, model), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # paused as soon as it holds the lock (a 12-tile run may finish within one poll of its progress),
    # while the second run starts
    wait_for(lambda: (store / "labels" / ".sebre-lock-sebre").exists(), first)
    os.kill(first.pid, signal.SIGSTOP)
    try:
        assert first.poll() is None, "the first run ended before the second started"
        second = in_process(segment_cmd(store, model))
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert second.exit_code == 2
    assert ".sebre-lock-sebre" in second.stderr and f"pid {first.pid}" in second.stderr and "delete" in second.stderr
    assert first.wait(timeout=600) == 0, first.stderr.read()
    assert listed(store) == ["truth", "sebre"]


def test_unfinished_layer_from_other_settings_is_refused(setup, tmp_path):
    work, *_ = setup
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
    ok = subprocess.run(
        [*segment_cmd(store, work / "m.safetensors"), "--overwrite"], capture_output=True, text=True, timeout=600
    )
    assert ok.returncode == 0, ok.stderr


def test_resume_flag_needs_an_interrupted_run(setup, tmp_path):
    work, *_ = setup
    finished = tmp_path / "finished.zarr"
    shutil.copytree(work / "clean.zarr", finished)
    before = layer_files(finished)
    proc = subprocess.run(
        [*segment_cmd(finished, work / "m.safetensors"), "--resume"], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 2 and "not an interrupted run" in proc.stderr
    assert layer_files(finished) == before
    bare = tmp_path / "bare.zarr"
    shutil.copytree(work / "clean.zarr", bare, ignore=shutil.ignore_patterns("labels"))
    proc = subprocess.run(
        [*segment_cmd(bare, work / "m.safetensors"), "--resume"], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 2 and "no label layer 'sebre' to resume" in proc.stderr
    assert not (bare / "labels").exists()  # nothing written


@pytest.mark.parametrize(
    "signum, draw", [(signal.SIGTERM, 0), (signal.SIGTERM, 1), (signal.SIGTERM, 2), (signal.SIGINT, 1)]
)
def test_a_signal_stops_the_run_cleanly_and_the_same_command_resumes_it(setup, tmp_path, signum, draw):
    """SLURM's preemption (SIGTERM) or Ctrl-C (SIGINT) at several points: no new batch is taken,
    progress is saved, the lock released, one line says where it stopped, the exit code is 128 +
    the signal, and the same command finishes a layer byte-identical to an uninterrupted run."""
    work, clean, batches, steps = setup
    after = sorted(steps)[[0, len(steps) // 2, -1][draw]]
    store = fresh_copy(work, tmp_path)
    proc = subprocess.Popen(
        segment_cmd(store, work / "m.safetensors"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    wait_for(lambda: progress_of(store) >= after, proc)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signum, err
    found = re.fullmatch(r"sebre: interrupted at (\d+) of (\d+) tiles; run the same command to resume\n", err)
    assert found, err
    done, total = int(found[1]), int(found[2])
    assert 0 < done < total and done == 2 * progress_of(store)
    assert not (store / "labels" / ".sebre-lock-sebre").exists(), "the lock is released"
    assert not list(store.rglob("*.partial")), "no temporary chunk files left"
    rerun = subprocess.run(segment_cmd(store, work / "m.safetensors"), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert "resumed" in rerun.stdout
    assert layer_files(store) == clean


def test_a_full_disk_is_one_line_exit_2_and_the_same_command_resumes(setup, tmp_path, monkeypatch):
    """The disk fills after a few label chunks (ENOSPC from the write itself, half a file written):
    one line naming the store and the fix, exit code 2, no temporary file left, the lock released;
    once there is space, the same command finishes a layer byte-identical to an uninterrupted run."""
    import errno

    import sebre_ij.chunkfiles

    work, clean, batches, steps = setup
    store = fresh_copy(work, tmp_path)
    real_write, written = sebre_ij.chunkfiles.write_file, []

    def fill_up(path, data):
        if path.endswith(".partial") and "labels/sebre" in path:
            written.append(path)
            if len(written) > 6:
                real_write(path, data[: len(data) // 2])
                raise OSError(errno.ENOSPC, "No space left on device", path)
        return real_write(path, data)

    monkeypatch.setattr(sebre_ij.chunkfiles, "write_file", fill_up)
    result = CliRunner().invoke(app, segment_cmd(store, work / "m.safetensors")[3:])
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1
    assert re.match(
        rf"sebre: error: {re.escape(str(store))}: the disk is full while writing labels/sebre .*; "
        r"free space on it .*then run the same command to resume",
        result.stderr,
    )
    assert not list(store.rglob("*.partial")) and not (store / "labels" / ".sebre-lock-sebre").exists()
    monkeypatch.setattr(sebre_ij.chunkfiles, "write_file", real_write)
    rerun = CliRunner().invoke(app, segment_cmd(store, work / "m.safetensors")[3:])
    assert rerun.exit_code == 0, rerun.output
    assert layer_files(store) == clean
