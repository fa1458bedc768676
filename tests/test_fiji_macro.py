"""Fiji's side of `sebre segment`: the SeBRe_Segment.ijm macro run by real ImageJ 1.x under Xvfb,
and `segment --imagej` with and without a display. Every ImageJ run has a timeout: under Xvfb a
macro error opens a modal dialog that would otherwise hang the test."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import SEBRE, copy_slide

from sebre_ij.rois import read_roiset
from sebre_ij.slide import open_slide

ROOT = Path(__file__).resolve().parents[1]
MACRO = ROOT / "fiji_scripts" / "SeBRe_Segment.ijm"
SEBRE_BIN = Path(sys.executable).parent / "sebre"


def sebre(*args, check=True, env=None, wrap=()):
    proc = subprocess.run(
        [*wrap, *SEBRE, *map(str, args)], capture_output=True, text=True, timeout=600, cwd=ROOT, env=env
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"sebre {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


@pytest.fixture(scope="module")
def trained(trained_slide, tmp_path_factory):
    """The shared small slide (a private copy) and its tiny model."""
    work = tmp_path_factory.mktemp("fiji")
    slide, model = trained_slide
    return work, copy_slide(slide, work), model


def run_macro(xvfb_run, ij_jar, arg, timeout=300):
    started = time.perf_counter()
    proc = subprocess.run(
        [xvfb_run, "-a", "java", "-jar", str(ij_jar), "-batch", str(MACRO), arg],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
    return proc, time.perf_counter() - started


def test_macro_segments_and_fills_the_roi_manager(trained, ij_jar, xvfb_run):
    work, slide, model = trained
    proc, seconds = run_macro(
        xvfb_run, ij_jar, f"slide=[{slide}] model=[{model}] labels=fiji sebre=[{SEBRE_BIN}] min_score=0.05"
    )
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    counts = [i for i, line in enumerate(lines) if re.fullmatch(r"SeBRe: \d+ ROIs", line)]
    assert counts, proc.stdout + proc.stderr
    n = int(lines[counts[0]].split()[1])
    names = lines[counts[0] + 1 : counts[0] + 1 + n]
    roiset = work / f"{slide.stem}-fiji-RoiSet.zip"
    assert lines[counts[0] + 1 + n] == f"SeBRe: RoiSet {roiset}"
    assert n > 0
    assert names == [roi.name for roi in read_roiset(roiset)]
    assert "fiji" in open_slide(slide).label_names()
    print(f"SeBRe_Segment.ijm wall time: {seconds:.1f} s")


def test_macro_reports_a_bad_slide_in_one_line(trained, ij_jar, xvfb_run, tmp_path):
    _, _, model = trained
    missing = tmp_path / "missing.zarr"
    proc, seconds = run_macro(xvfb_run, ij_jar, f"slide=[{missing}] model=[{model}] sebre=[{SEBRE_BIN}]", timeout=120)
    errors = [line for line in proc.stdout.splitlines() if line.startswith("SeBRe: error:")]
    assert len(errors) == 1, proc.stdout + proc.stderr
    assert str(missing) in errors[0] and "sebre: error:" in errors[0]
    assert "ROIs" not in proc.stdout


def imagej_segment(slide, model, labels: str) -> tuple:
    """`sebre segment` arguments that push the regions into ImageJ."""
    return ("segment", slide, "--model", model, "--labels", labels, "--min-score", 0.05, "--imagej")


def test_segment_imagej_without_display_writes_labels_then_hints(trained):
    _, slide, model = trained
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    proc = sebre(*imagej_segment(slide, model, "nodisplay"), check=False, env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1 and "xvfb-run -a sebre segment" in proc.stderr and "--rois" in proc.stderr
    assert "nodisplay" in open_slide(slide).label_names()  # written (and registered) before the push


def test_segment_imagej_under_xvfb_pushes_every_region(trained, xvfb_run, ij_jar):
    work, slide, model = trained
    roiset = work / "pushed.zip"
    proc = sebre(
        *imagej_segment(slide, model, "pushed"),
        "--rois",
        roiset,
        wrap=(xvfb_run, "-a"),
        env={**os.environ, "SEBRE_IJ_JAR": str(ij_jar)},
    )
    pushed = re.search(r"ImageJ ROI Manager: (\d+) ROIs", proc.stdout)
    assert pushed, proc.stdout + proc.stderr
    assert int(pushed.group(1)) == len(read_roiset(roiset)) > 0
