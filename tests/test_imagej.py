"""Our ROIs as real ImageJ 1.x sees them: ij.jar through scyjava, the ROI Manager under Xvfb."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jpype
import numpy as np
import pytest
import scyjava

from sebre_ij import imagej as sij
from sebre_ij.outlines import regions_from_labels
from sebre_ij.rois import imagej_roi, write_roiset

ROOT = Path(__file__).resolve().parents[1]
PROPS = {
    1: {"name": "cortex", "class": 2, "section": 1, "color": (10, 20, 30), "score": 0.75},
    2: {"name": "striatum", "class": 300, "section": 1, "color": (200, 100, 50)},
}
FAR = (3.0, 100000.25)  # (oy, ox): beyond ImageJ's 16-bit integer coordinates


def make_labels():
    labels = np.zeros((40, 60), np.int32)
    yy, xx = np.mgrid[:40, :60]
    labels[(yy - 15) ** 2 + (xx - 18) ** 2 < 12**2] = 1  # a disk with a hole ...
    labels[12:18, 15:21] = 0
    labels[30:37, 5:30] = 1  # ... and a second part: a composite ROI
    labels[5:35, 40:52] = 2  # a plain polygon
    return labels


def rings(region):
    return [ring for exterior, holes in region.polygons for ring in (exterior, *holes)]


def assert_same_roi(got, region):
    assert got["name"] == region.name
    assert got["color"] == region.color
    assert got["type"] == ("Polygon" if len(rings(region)) == 1 else "Composite")
    assert len(got["rings"]) == len(rings(region))
    for decoded, ring in zip(got["rings"], rings(region)):
        np.testing.assert_allclose(decoded, ring.astype(np.float32), rtol=0, atol=1e-3)


def test_imagej_decodes_what_we_wrote(imagej, tmp_path):
    regions = regions_from_labels(make_labels(), PROPS, offset=FAR)
    write_roiset(tmp_path / "RoiSet.zip", regions, position=2)
    decoded = sij.decode_roiset_with_imagej(tmp_path / "RoiSet.zip")
    assert len(decoded) == len(regions) == 2
    for got, region in zip(decoded, regions):
        assert_same_roi(got, region)
        assert got["group"] == 0 and got["position"] == 2
        assert got["bounds"][0] > 100000
    assert decoded[0]["properties"] == {"class": "2", "class_name": "cortex", "section": "1", "score": "0.75"}
    assert decoded[1]["properties"] == {"class": "300", "class_name": "striatum", "section": "1"}


def test_imagej_reads_groups(imagej, tmp_path):
    regions = regions_from_labels(make_labels(), PROPS, offset=FAR)
    write_roiset(tmp_path / "RoiSet.zip", regions, groups=True)
    decoded = sij.decode_roiset_with_imagej(tmp_path / "RoiSet.zip")
    # ImageJ then shows its group colours, so colours are not compared here
    assert [d["group"] for d in decoded] == [2, 255]


def imagej_mask(roi, shape):
    """ImageJ's own rasterisation of a ROI, as a full-size boolean image."""
    mask, box = roi.getMask(), roi.getBounds()
    pixels = np.array(mask.getPixels(), dtype=np.int8).reshape(mask.getHeight(), mask.getWidth()) != 0
    full = np.zeros(shape, bool)
    full[box.y : box.y + box.height, box.x : box.x + box.width] = pixels
    return full


@pytest.mark.parametrize("tolerance", [0, None])
def test_imagej_fills_our_outlines_back_into_the_labels(imagej, tolerance):
    """The coordinate convention, checked by ImageJ: pixel centres inside the outline = the label."""
    labels = make_labels()
    decoder = scyjava.jimport("ij.io.RoiDecoder")
    for region in regions_from_labels(labels, PROPS, tolerance=tolerance):
        data = jpype.JArray(jpype.JByte)(imagej_roi(region).tobytes())
        roi = decoder(data, f"{region.name}.roi").getRoi()
        np.testing.assert_array_equal(imagej_mask(roi, labels.shape), labels == region.value)


def test_java_roi_matches_the_file(imagej):
    for region in regions_from_labels(make_labels(), PROPS, offset=FAR):
        got = sij.roi_to_dict(sij.java_roi(region, position=4))
        assert_same_roi(got, region)
        assert got["position"] == 4 and got["properties"]["class"] == str(region.class_index)


def test_overlay_tiff_headless(imagej, tmp_path):
    regions = regions_from_labels(make_labels(), PROPS)
    image = np.arange(2 * 40 * 60, dtype=np.uint16).reshape(2, 40, 60)
    out = sij.save_overlay_tiff(image, regions, tmp_path / "overlay.tif")
    reopened = imagej.openImage(str(out))
    assert (reopened.getStackSize(), reopened.getWidth(), reopened.getHeight()) == (2, 60, 40)
    overlay = reopened.getOverlay()
    assert overlay.size() == 2
    for i, region in enumerate(regions):
        assert_same_roi(sij.roi_to_dict(overlay.get(i)), region)
    again = sij.save_overlay_tiff(out, regions[1:], tmp_path / "again.tif")  # from a file ImageJ opens
    assert imagej.openImage(str(again)).getOverlay().size() == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.tif", "overlay.tif"]


def test_roi_manager_refuses_headless(imagej):
    regions = regions_from_labels(make_labels(), PROPS)
    with pytest.raises(RuntimeError, match="xvfb-run"):
        sij.push_to_roi_manager(regions)
    assert sij.read_roi_manager() == []


PUSH_SCRIPT = """
import json, os, sys
import numpy as np
from sebre_ij import imagej
from sebre_ij.outlines import regions_from_labels
spec = json.load(open(sys.argv[1]))
props = {int(k): v for k, v in spec["props"].items()}
regions = regions_from_labels(np.array(spec["labels"], np.int32), props, offset=tuple(spec["offset"]))
IJ = imagej.start_imagej(sys.argv[2], headless=False)
imagej.push_to_roi_manager(regions)
imagej.push_to_roi_manager(regions[:1], IJ.createImage("plane", "8-bit black", 64, 64, 1))
rois = imagej.read_roi_manager()
print(json.dumps([{**r, "coordinates": None, "rings": [x.tolist() for x in r["rings"]]} for r in rois]))
sys.stdout.flush()
os._exit(0)  # AWT threads would keep the JVM, and this process, alive
"""


def test_roi_manager_under_xvfb(ij_jar, xvfb_run, tmp_path):
    labels = make_labels()
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"labels": labels.tolist(), "props": PROPS, "offset": FAR}))
    result = subprocess.run(
        [xvfb_run, "-a", sys.executable, "-c", PUSH_SCRIPT, str(spec), str(ij_jar)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rois = json.loads(result.stdout.strip().splitlines()[-1])
    regions = regions_from_labels(labels, PROPS, offset=FAR)
    assert len(rois) == len(regions) + 1
    for got, region in zip(rois, [*regions, regions[0]]):
        got["rings"] = [np.array(ring) for ring in got["rings"]]
        got["color"] = tuple(got["color"])
        assert_same_roi(got, region)


def test_ij_jar_lookup(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="SEBRE_IJ_JAR"):
        sij.ij_jar(tmp_path / "missing.jar")
    jar = tmp_path / "ij-1.54f.jar"
    jar.write_bytes(b"")
    monkeypatch.setenv(sij.JAR_ENV, str(jar))
    assert sij.ij_jar() == jar
    assert sij.ij_jar(jar) == jar
