"""evaluate.py: `sebre evaluate` on tiny inputs of every kind, worked out by hand."""

import csv
import json
import os
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import SEBRE
from PIL import Image
from roifile import ImagejRoi

from sebre_ij.errors import UserError
from sebre_ij.evaluate import LabelPlane, evaluate, section_map
from sebre_ij.layer import create_layer, finish_layer
from sebre_ij.pyramid import build_pyramid
from sebre_ij.slide import open_slide
from sebre_ij.stores import write_slide


def two_sections():
    """Level-1 truth and prediction (16 x 36 px), worked out by hand.

    Truth: cortex (1) in rows 0-7 of columns 0-15 and 20-35 (section A, section B: 128 px each),
    thalamus (5) in rows 8-15, columns 0-7 (section A, 64 px). The prediction numbers its sections
    (value = section * 10 + class): s1 cortex exactly (score 0.9); s1 thalamus columns 0-3 only
    (32 px, IoU 0.5, score 0.8); s2 cortex rows 0-3 (64 px, IoU 0.5, score 0.6); s2 thalamus in rows
    8-11 of columns 20-35 where there is none (64 px, score 0.7)."""
    truth = np.zeros((16, 36), np.uint8)
    truth[:8, :16] = truth[:8, 20:] = 1
    truth[8:, :8] = 5
    pred = np.zeros((16, 36), np.uint32)
    pred[:8, :16] = 11
    pred[8:, :4] = 15
    pred[:4, 20:] = 21
    pred[8:12, 20:] = 25
    scores = {11: 0.9, 15: 0.8, 21: 0.6, 25: 0.7}
    return truth, pred, scores


def write_two_sections(path):
    """A 2-level slide whose truth layer is `two_sections` at level 1, and a layer `pred` there."""
    truth, pred, scores = two_sections()
    write_slide(
        path, np.full((3, 32, 72), 230, np.uint8), np.kron(truth, np.ones((2, 2), np.uint8)), 1.0, chunk=16, levels=2
    )
    layer = create_layer(open_slide(path), "pred", level=1)
    layer.write(0, (slice(0, 16), slice(0, 36)), pred)
    build_pyramid(layer)
    props = [
        {
            "label-value": v,
            "name": "cortex" if v % 10 == 1 else "thalamus",
            "class": v % 10,
            "section": v // 10,
            "score": s,
        }
        for v, s in scores.items()
    ]
    finish_layer(layer, props, [{"label-value": v, "rgba": [200, 0, 0, 255]} for v in scores])


def test_layers_in_one_store_by_hand(tmp_path):
    write_two_sections(tmp_path / "s.zarr")
    report = evaluate(f"{tmp_path}/s.zarr/labels/pred", str(tmp_path / "s.zarr"), truth_labels="truth")
    regions = {r["region"]: r for r in report["regions"]}
    # cortex: truth 256, predicted 192, all of it true -> Dice 384/448, IoU 192/256
    assert regions["cortex"]["dice"] == pytest.approx(384 / 448, abs=1e-4) and regions["cortex"]["iou"] == 0.75
    # thalamus: truth 64, predicted 96, 32 shared -> Dice 64/160, IoU 32/128
    assert regions["thalamus"]["dice"] == 0.4 and regions["thalamus"]["iou"] == 0.25
    # read at the prediction's level 1 (the truth's level 0 would be 4 times the pixels)
    assert regions["cortex"]["truth_px"] == 256
    # AP cortex: IoU 1 and 0.5 -> 1 at 0.5, 51/101 above; thalamus: hit at 0.5 only, before the false one
    cortex_ap = (1 + 9 * 51 / 101) / 10
    assert regions["cortex"]["ap50"] == 1 and regions["cortex"]["ap"] == pytest.approx(cortex_ap, abs=1e-4)
    assert regions["thalamus"]["ap50"] == 1 and regions["thalamus"]["ap"] == pytest.approx(0.1)
    assert report["mAP@0.5"] == 1 and report["mAP@0.5:0.95"] == pytest.approx((cortex_ap + 0.1) / 2, abs=1e-4)
    # the truth has no sections: the prediction's, piece by piece, split it into s1 and s2
    by_section = {(r["section"], r["region"]): r["dice"] for r in report["sections"]}
    assert by_section == {
        ("s_s1", "cortex"): 1.0,
        ("s_s1", "thalamus"): pytest.approx(0.6667, abs=1e-4),
        ("s_s2", "cortex"): pytest.approx(0.6667, abs=1e-4),
        ("s_s2", "thalamus"): 0.0,
    }


def test_cli_writes_metrics_and_pictures(tmp_path):
    """A label image against a RoiSet drawn on it, through `sebre evaluate`."""
    truth, _, _ = two_sections()
    Image.fromarray(truth).save(tmp_path / "pred.png")
    rois = []
    for name, (x0, y0, x1, y1) in {
        "s1-cortex": (0, 0, 16, 8),
        "s2-cortex": (20, 0, 36, 8),
        "s1-thalamus": (0, 8, 8, 16),
    }.items():
        roi = ImagejRoi.frompoints(np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], float))
        roi.name = name
        rois.append(roi)
    with zipfile.ZipFile(tmp_path / "RoiSet.zip", "w") as zf:
        for roi in rois:
            zf.writestr(f"{roi.name}.roi", roi.tobytes())
    classes = [
        {"index": 1, "name": "cortex", "rgb": [230, 90, 60]},
        {"index": 5, "name": "thalamus", "rgb": [0, 120, 60]},
    ]
    (tmp_path / "classes.json").write_text(json.dumps({"classes": classes}))
    out = tmp_path / "eval"
    run = subprocess.run(
        [
            *SEBRE,
            "evaluate",
            str(tmp_path / "pred.png"),
            str(tmp_path / "RoiSet.zip"),
            "--classes",
            str(tmp_path / "classes.json"),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "mAP@0.5 1.000" in run.stdout
    report = json.loads((out / "metrics.json").read_text())
    assert {r["region"]: r["dice"] for r in report["regions"]} == {"cortex": 1.0, "thalamus": 1.0}
    # the RoiSet names two sections: one picture each, and per-section rows in the CSV
    assert sorted(p.name for p in out.glob("*.png")) == ["pred_s1.png", "pred_s2.png"]
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["section"], r["region"]) for r in rows] == [
        ("pred_s1", "cortex"),
        ("pred_s1", "thalamus"),
        ("pred_s2", "cortex"),
        ("all", "cortex"),
        ("all", "thalamus"),
    ]
    with open(out / "confusion.csv") as f:
        confusion_rows = list(csv.reader(f))
    assert confusion_rows[0][:2] == ["truth \\ prediction", "background"] and confusion_rows[2][2] == "256"
    with Image.open(out / "pred_s1.png") as im:
        assert im.width > im.height  # truth and prediction side by side


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "broken.zip").write_bytes(b"not a zip")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "pred.png")
    run = subprocess.run(
        [
            *SEBRE,
            "evaluate",
            str(tmp_path / "pred.png"),
            str(tmp_path / "broken.zip"),
            "--classes",
            str(tmp_path / "missing.json"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 2 and run.stderr.count("\n") == 1
    assert run.stderr.startswith(f"sebre: error: {tmp_path / 'missing.json'}: cannot read this JSON file")


def test_bad_inputs_name_the_file_and_the_fix(tmp_path):
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((4, 9), np.uint8)).save(tmp_path / "b.png")
    (tmp_path / "broken.zip").write_bytes(b"not a zip")
    (tmp_path / "c.json").write_text(json.dumps({"classes": [{"index": 1, "name": "cortex"}]}))
    with pytest.raises(UserError, match=r"a.png: label images need their class table; pass classes=FILE.json"):
        evaluate(str(tmp_path / "a.png"), str(tmp_path / "a.png"))
    with pytest.raises(UserError, match=r"broken.zip: not a readable zip file"):
        evaluate(str(tmp_path / "a.png"), str(tmp_path / "broken.zip"), classes=tmp_path / "c.json")
    with pytest.raises(UserError, match=r"not the same field of view"):
        evaluate(str(tmp_path / "a.png"), str(tmp_path / "b.png"), classes=tmp_path / "c.json")
    with pytest.raises(UserError, match=r"missing.zarr"):
        evaluate(str(tmp_path / "missing.zarr"), str(tmp_path / "a.png"), classes=tmp_path / "c.json")


def test_a_real_glta_section_against_itself():
    """The shared set's own class table is found beside the label image; identical labels score 1."""
    data = Path(os.environ.get("SEBRE_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) / "glta"
    if not (data / "sections.json").is_file():
        pytest.skip(f"shared data not found at {data.parent} (set SEBRE_DATA to the folder holding glta/)")
    labels = str(data / "labels" / "glta_s044.png")
    report = evaluate(labels, labels)
    assert report["classes"][1] == "cortex" and report["mAP@0.5:0.95"] == 1
    assert {r["region"] for r in report["regions"]} >= {"cortex", "hippocampus", "striatum_pallidum"}
    assert all(r["dice"] == 1 for r in report["regions"])


def test_sections_follow_the_numbered_side_and_missed_tissue_is_its_own():
    # the prediction numbers two sections (values 11 and 21); the truth has a third piece nobody predicted
    pred = np.zeros((5, 12), np.uint32)
    pred[:, 0:2], pred[:, 5:7] = 11, 21
    truth = np.zeros((5, 12), np.uint8)
    truth[:, 0:3] = truth[:, 5:7] = truth[:, 10:] = 1
    sections = section_map(
        LabelPlane("t", truth, {1: 1}, None, {}), truth, LabelPlane("p", pred, {11: 1, 21: 1}, {11: 1, 21: 2}, {}), pred
    )
    # columns 0-2 are one piece, numbered 1 where predicted; 5-6 are section 2; 10-11 are a piece of
    # tissue with no numbered pixel: section 3. Background belongs to none.
    np.testing.assert_array_equal(sections, np.tile([1, 1, 1, 0, 0, 2, 2, 0, 0, 0, 3, 3], (5, 1)))
