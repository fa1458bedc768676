import csv

import numpy as np
import pytest

from sebre_ij.measure import measure_regions, write_csv

LABELS = np.array([[0, 1, 1, 0], [0, 1, 1, 0], [2, 2, 0, 3]])
IMAGE = np.stack([np.arange(12).reshape(3, 4), np.full((3, 4), 7)]).astype(np.uint16)
PROPS = {1: {"name": "cortex", "class": 4, "section": 2}, 2: {"name": "striatum", "class": 5}}


def test_hand_computed_rows():
    rows = measure_regions(LABELS, IMAGE, PROPS, 0.5, ["dapi", "gfp"])
    assert [(r["label"], r["section"], r["name"], r["class"]) for r in rows] == [
        (1, 2, "s2-cortex", 4),
        (2, 0, "s0-striatum", 5),
        (3, 0, "s0-3", 0),
    ]
    cortex, striatum, lone = rows
    # cortex: dapi 1, 2, 5, 6 -> mean 3.5, sample SD sqrt(17 / 3); 4 pixels of 0.25 um2
    assert cortex["area_um2"] == pytest.approx(1.0)
    assert cortex["mean_dapi"] == pytest.approx(3.5)
    assert cortex["sd_dapi"] == pytest.approx(np.sqrt(17 / 3))
    assert (cortex["mean_gfp"], cortex["sd_gfp"]) == (7.0, 0.0)
    # skimage traces boundary-pixel centres: a 2x2 square is 4 px around = 2 um
    assert cortex["perimeter_um"] == pytest.approx(2.0)
    # striatum: dapi 8, 9 -> mean 8.5, SD sqrt(0.5)
    assert (striatum["area_um2"], striatum["mean_dapi"]) == (0.5, 8.5)
    assert striatum["sd_dapi"] == pytest.approx(np.sqrt(0.5))
    # one pixel: SD 0 as in ImageJ, no perimeter
    assert (lone["area_um2"], lone["mean_dapi"], lone["sd_dapi"], lone["perimeter_um"]) == (0.25, 11.0, 0.0, 0.0)


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="channel names"):
        measure_regions(LABELS, IMAGE, PROPS, 0.5, ["dapi"])
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        measure_regions(LABELS, IMAGE[0], PROPS, 0.5, ["dapi"])


def test_csv(tmp_path):
    rows = measure_regions(LABELS.astype(np.uint64), IMAGE, PROPS, 0.5, ["dapi", "gfp"])
    write_csv(tmp_path / "m.csv", rows)
    with open(tmp_path / "m.csv", newline="") as fh:
        read = list(csv.DictReader(fh))
    assert list(read[0]) == [
        "label",
        "section",
        "name",
        "class",
        "area_um2",
        "perimeter_um",
        "mean_dapi",
        "sd_dapi",
        "mean_gfp",
        "sd_gfp",
    ]
    assert [r["name"] for r in read] == ["s2-cortex", "s0-striatum", "s0-3"]
    assert float(read[0]["sd_dapi"]) == pytest.approx(np.sqrt(17 / 3))
    write_csv(tmp_path / "empty.csv", [])
    assert (tmp_path / "empty.csv").read_text() == ""
