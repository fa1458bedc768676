"""readers.py: ROIs rasterised into class maps (ImageJ's fill rules), ROI names to classes, images
with their pixel size, and `sebre train IMAGE --rois RoiSet.zip` on a RoiSet written by ImageJ itself."""

import json
import subprocess
import zipfile
from pathlib import Path

import jpype
import numpy as np
import pytest
import scyjava
import tifffile
from conftest import SEBRE, TINY_TRAIN
from PIL import Image
from roifile import ImagejRoi

from sebre_ij.checkpoint import read_card
from sebre_ij.errors import UserError
from sebre_ij.outlines import Region
from sebre_ij.readers import rasterise_rois, read_image, roi_class, roi_class_table
from sebre_ij.rois import imagej_roi, read_roiset

ROOT = Path(__file__).resolve().parents[1]


def square(x0, y0, x1, y1):
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], float)


def composite(name, outer, hole):
    return imagej_roi(Region(1, name, 1, name, 1, (255, 0, 0), None, [(outer, [hole[::-1]])]))


def test_polygon_fills_pixels_whose_centre_is_inside():
    roi = ImagejRoi.frompoints(square(1, 1, 4, 3))  # corners: columns 1-3, rows 1-2
    roi.name = "cortex"
    expected = np.zeros((5, 6), np.uint8)
    expected[1:3, 1:4] = 2
    np.testing.assert_array_equal(rasterise_rois([roi], [2], (5, 6)), expected)


def test_triangle_follows_the_centre_rule():
    roi = ImagejRoi.frompoints(np.array([[0, 0], [5, 0], [0, 4]], float))  # 4x + 5y < 20, never 0 at a centre
    yy, xx = np.mgrid[:5, :5]
    expected = (4 * (xx + 0.5) + 5 * (yy + 0.5) < 20).astype(np.uint8)
    np.testing.assert_array_equal(rasterise_rois([roi], [1], (5, 5)), expected)


def test_composite_keeps_its_hole_and_later_rois_paint_over():
    ring = composite("thalamus", square(0, 0, 6, 6), square(2, 2, 4, 4))
    assert ring.multi_coordinates is not None
    inner = ImagejRoi.frompoints(square(5, 5, 7, 7))
    expected = np.ones((8, 8), np.uint8)
    expected[6:, :] = expected[:, 6:] = 0
    expected[2:4, 2:4] = 0
    expected[5:7, 5:7] = 3
    np.testing.assert_array_equal(rasterise_rois([ring, inner], [1, 3], (8, 8)), expected)


def test_rasterise_scales_to_a_coarser_level():
    roi = ImagejRoi.frompoints(square(0, 0, 8, 4))
    expected = np.zeros((4, 4), np.uint8)
    expected[:2, :4] = 1
    np.testing.assert_array_equal(rasterise_rois([roi], [1], (4, 4), scale=(0.5, 0.5)), expected)


def test_roi_names_give_classes():
    assert roi_class("s12-cortex", None, "R.zip") == "cortex"
    assert roi_class("hippocampus", None, "R.zip") == "hippocampus"
    assert roi_class("s1-ctx", {"ctx": "cortex"}, "R.zip") == "cortex"
    with pytest.raises(UserError, match=r"R.zip: ROI '0012-0345' names no class.*class_map=FILE.json"):
        roi_class("0012-0345", None, "R.zip")
    with pytest.raises(UserError, match=r"R.zip: ROI 'striatum' is not in the class map"):
        roi_class("striatum", {"ctx": "cortex"}, "R.zip")


def test_class_colours_come_from_stroke_colours():
    red = composite("s1-thalamus", square(0, 0, 6, 6), square(2, 2, 4, 4))
    plain = ImagejRoi.frompoints(square(0, 0, 2, 2))
    plain.name = "cortex"
    table = roi_class_table([red, plain], None, "R.zip")
    assert table.names == ["background", "cortex", "thalamus"]
    assert table.colors[2] == (255, 0, 0)


def test_imagej_tiff_says_its_pixel_size(tmp_path):
    path = tmp_path / "section.tif"
    tifffile.imwrite(
        path, np.zeros((8, 8, 3), np.uint8), imagej=True, resolution=(1 / 16, 1 / 16), metadata={"unit": "micron"}
    )
    found = read_image(path)
    assert (
        found.pixels.shape == (3, 8, 8)
        and found.channels == ["R", "G", "B"]
        and found.pixel_size_um == pytest.approx(16)
    )


def section_image(size=256):
    """A bright disc with a dark 'cortex' band on the left and a grey 'thalamus' ring at the centre."""
    yy, xx = np.mgrid[:size, :size]
    image = np.full((size, size, 3), 235, np.uint8)
    image[(yy - 128) ** 2 + (xx - 128) ** 2 < 110**2] = (200, 170, 190)
    image[40:216, 30:90] = (120, 60, 110)
    image[100:180, 120:200] = (160, 120, 150)
    image[130:150, 150:170] = (200, 170, 190)
    return image


def imagej_rois():
    """ROIs as a Fiji user draws them: a polygon and a ShapeRoi with a hole, named by class."""
    jimport = scyjava.jimport
    Color, Rectangle = jimport("java.awt.Color"), jimport("java.awt.Rectangle")
    PolygonRoi, ShapeRoi, Roi = jimport("ij.gui.PolygonRoi"), jimport("ij.gui.ShapeRoi"), jimport("ij.gui.Roi")
    FloatPolygon = jimport("ij.process.FloatPolygon")
    floats = lambda values: jpype.JArray(jpype.JFloat)(values)  # noqa: E731
    cortex = PolygonRoi(FloatPolygon(floats([30, 90, 90, 30]), floats([40, 40, 216, 216])), Roi.POLYGON)
    cortex.setName("s1-cortex")
    cortex.setStrokeColor(Color(10, 200, 30))
    thalamus = ShapeRoi(Rectangle(120, 100, 80, 80)).xor(ShapeRoi(Rectangle(150, 130, 20, 20)))
    thalamus.setName("thalamus")
    return [cortex, thalamus]


def write_roiset_with_imagej(rois, path):
    """RoiSet.zip the way the ROI Manager saves one: RoiEncoder into a ZipOutputStream."""
    jimport = scyjava.jimport
    zos = jimport("java.util.zip.ZipOutputStream")(jimport("java.io.FileOutputStream")(str(path)))
    out = jimport("java.io.DataOutputStream")(jimport("java.io.BufferedOutputStream")(zos))
    encoder = jimport("ij.io.RoiEncoder")(out)
    for roi in rois:
        zos.putNextEntry(jimport("java.util.zip.ZipEntry")(f"{roi.getName()}.roi"))
        encoder.write(roi)
        out.flush()
    out.close()


def imagej_mask(roi, shape):
    """ImageJ's own fill of a ROI, as a full-image boolean mask."""
    bounds, mask = roi.getBounds(), roi.getMask()
    out = np.zeros(shape, bool)
    w, h = int(mask.getWidth()), int(mask.getHeight())
    pixels = np.frombuffer(bytes(mask.getPixels()), np.uint8).reshape(h, w) != 0
    out[bounds.y : bounds.y + h, bounds.x : bounds.x + w] = pixels
    return out


def train_on_rois(image, roiset, out, *flags) -> subprocess.CompletedProcess:
    """`sebre train IMAGE --rois ROISET --out OUT FLAGS...` as a user runs it."""
    cmd = [*SEBRE, "train", image, "--rois", roiset, "--out", out, *flags]
    return subprocess.run(list(map(str, cmd)), capture_output=True, text=True, timeout=600, cwd=ROOT)


def test_train_from_a_roiset_written_by_imagej(imagej, tmp_path):
    image = tmp_path / "section.tif"
    tifffile.imwrite(image, section_image(), photometric="rgb")
    java_rois, roiset = imagej_rois(), tmp_path / "RoiSet.zip"
    write_roiset_with_imagej(java_rois, roiset)
    rois = read_roiset(roiset)
    assert [r.name for r in rois] == ["s1-cortex", "thalamus"]
    for cls, (ours, theirs) in enumerate(zip(rois, java_rois), start=1):  # our fill is ImageJ's fill
        np.testing.assert_array_equal(rasterise_rois([ours], [cls], (256, 256)) == cls, imagej_mask(theirs, (256, 256)))

    model = tmp_path / "model.safetensors"
    proc = train_on_rois(image, roiset, model, "--steps", "5", "--pixel-size-in", "16", *TINY_TRAIN)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    card = read_card(model)
    assert card.classes == ["background", "cortex", "thalamus"]
    assert card.colors[1] == (10, 200, 30)
    assert card.channels == ["R", "G", "B"] and card.training["rois"] == [str(roiset)]


def test_train_names_the_unknown_roi(tmp_path):
    image, roiset, mapping = tmp_path / "s.png", tmp_path / "RoiSet.zip", tmp_path / "classes.json"
    Image.fromarray(section_image()).save(image)
    roi = ImagejRoi.frompoints(square(30, 40, 90, 216))
    roi.name = "s1-ctx"
    with zipfile.ZipFile(roiset, "w") as zf:
        zf.writestr("s1-ctx.roi", roi.tobytes())
    mapping.write_text(json.dumps({"hippo": "hippocampus"}))
    proc = train_on_rois(image, roiset, tmp_path / "m.safetensors", "--class-map", mapping, "--pixel-size-in", "16")
    assert proc.returncode == 2
    assert (
        proc.stderr.strip() == f"sebre: error: {roiset}: ROI 's1-ctx' is not in the class map; "
        "add it to the class map (--class-map FILE.json) or rename the ROI"
    )
