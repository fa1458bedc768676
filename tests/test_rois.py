"""rois.py: RoiSet.zip written and read back (roifile), refused when hostile, GeoJSON for QuPath."""

import json
import time
import zipfile

import numpy as np
import pytest
from roifile import ROI_TYPE, ImagejRoi

from sebre_ij.outlines import Region, polygon_area, regions_from_labels
from sebre_ij.rois import atomic_output, read_roiset, write_geojson, write_roiset

PROPS = {
    1: {"name": "cortex", "class": 2, "section": 1, "color": (10, 20, 30), "score": 0.75},
    2: {"name": "hippocampus", "class": 300, "section": 2, "color": (200, 100, 50)},
}


def two_regions():
    labels = np.zeros((20, 30), np.int32)
    labels[2:12, 2:12] = 1
    labels[5:8, 5:8] = 0
    labels[14:18, 20:28] = 2
    return regions_from_labels(labels, PROPS, offset=(0.0, 100000.25))


def test_geojson_for_qupath(tmp_path):
    regions = two_regions()
    regions[1].polygons.append(regions[1].polygons[0])  # force a MultiPolygon
    path = tmp_path / "regions.geojson"
    write_geojson(path, regions, pixel_size_um=0.5)
    collection = json.loads(path.read_text())
    assert collection["type"] == "FeatureCollection"
    first, second = collection["features"]
    assert first["geometry"]["type"] == "Polygon" and second["geometry"]["type"] == "MultiPolygon"
    exterior, hole = first["geometry"]["coordinates"]
    assert exterior[0] == exterior[-1] and hole[0] == hole[-1]
    assert min(x for x, _ in exterior) > 100000
    assert first["properties"] == {
        "objectType": "annotation",
        "name": "s1-cortex",
        "classification": {"name": "cortex", "color": [10, 20, 30]},
        "section": 1,
        "class": 2,
        "score": 0.75,
        "measurements": {"area_um2": pytest.approx(polygon_area(regions[0].polygons) * 0.25)},
    }
    assert second["properties"]["score"] is None


def test_roiset_roundtrip_with_roifile(tmp_path):
    regions = two_regions()
    path = tmp_path / "RoiSet.zip"
    assert write_roiset(path, regions, position=3, groups=True) == 2
    with zipfile.ZipFile(path) as zf:
        assert zf.namelist() == ["s1-cortex.roi", "s2-hippocampus.roi"]
    composite, polygon = read_roiset(path)
    assert composite.composite and composite.roitype == ROI_TYPE.RECT
    rings = ImagejRoi.path2coords(composite.multi_coordinates)
    ((exterior, (hole,)),) = regions[0].polygons
    for got, want in zip(rings, (exterior, hole)):
        np.testing.assert_array_equal(got[:-1], want.astype(np.float32))  # path2coords closes rings
    assert polygon.subpixelresolution and polygon.roitype == ROI_TYPE.POLYGON
    np.testing.assert_array_equal(polygon.coordinates(), regions[1].polygons[0][0].astype(np.float32))
    assert [r.name for r in (composite, polygon)] == ["s1-cortex", "s2-hippocampus"]
    assert [r.hexcolor(r.stroke_color) for r in (composite, polygon)] == ["#0a141e", "#c86432"]
    assert [r.group for r in (composite, polygon)] == [2, 255]  # class 300 clamped to ImageJ's 0-255
    assert [r.position for r in (composite, polygon)] == [3, 3]
    assert composite.properties == {"class": 2, "class_name": "cortex", "section": 1, "score": 0.75}
    assert polygon.properties == {"class": 300, "class_name": "hippocampus", "section": 2}


def test_roiset_defaults_and_unique_entries(tmp_path):
    region = two_regions()[1]
    path = tmp_path / "RoiSet.zip"
    write_roiset(path, [region, region, region])
    with zipfile.ZipFile(path) as zf:
        assert zf.namelist() == ["s2-hippocampus.roi", "s2-hippocampus-2.roi", "s2-hippocampus-3.roi"]
    assert all(r.group == 0 and r.position == 0 for r in read_roiset(path))


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "RoiSet.zip"
    path.write_bytes(b"previous run")
    broken = Region(1, "s1-empty", 1, "empty", 1, (1, 2, 3), None, [])
    with pytest.raises(ValueError, match="no polygon"):
        write_roiset(path, [*two_regions(), broken])
    with pytest.raises(RuntimeError), atomic_output(path) as tmp:
        tmp.write_bytes(b"half a zip")
        raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == [path] and path.read_bytes() == b"previous run"


def zip_with(path, name, data=b""):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(name, data)
    return path


@pytest.mark.parametrize("name", ["../evil.roi", "rois/../../evil.roi", "/etc/evil.roi", "C:\\evil.roi"])
def test_read_roiset_refuses_traversal(tmp_path, name):
    with pytest.raises(ValueError, match=r"evil\.zip: unsafe member name"):
        read_roiset(zip_with(tmp_path / "evil.zip", name))


def test_read_roiset_refuses_strangers(tmp_path):
    with pytest.raises(ValueError, match=r"notes\.zip: member 'notes\.txt' is not an ImageJ \.roi"):
        read_roiset(zip_with(tmp_path / "notes.zip", "notes.txt", b"hello"))
    with pytest.raises(ValueError, match=r"junk\.zip: member 'junk\.roi' is not a valid ImageJ ROI"):
        read_roiset(zip_with(tmp_path / "junk.zip", "junk.roi", b"x" * 100))
    (tmp_path / "plain.zip").write_text("not a zip")
    with pytest.raises(ValueError, match=r"plain\.zip: not a readable zip"):
        read_roiset(tmp_path / "plain.zip")


def test_read_roiset_refuses_zip_bomb(tmp_path):
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf, zf.open("bomb.roi", "w") as fh:
        zeros = bytes(2**20)
        for _ in range(65):
            fh.write(zeros)
    assert path.stat().st_size < 2**20
    with pytest.raises(ValueError, match=r"bomb\.zip: bomb\.roi would unpack to 68157440 bytes"):
        read_roiset(path)


def test_ten_thousand_rois(tmp_path):
    labels = np.zeros((1000, 1000), np.int32)
    rows, cols = np.divmod(np.arange(10_000), 100)
    for value, (r, c) in enumerate(zip(rows * 10, cols * 10), start=1):
        labels[r + 1 : r + 8, c + 2 : c + 9] = value
    start = time.perf_counter()
    regions = regions_from_labels(labels, {})
    contoured = time.perf_counter()
    assert write_roiset(tmp_path / "RoiSet.zip", regions) == 10_000
    written = time.perf_counter()
    assert len(read_roiset(tmp_path / "RoiSet.zip")) == 10_000
    print(
        f"10,000 regions: contours {contoured - start:.2f} s, write_roiset {written - contoured:.2f} s, "
        f"read_roiset {time.perf_counter() - written:.2f} s"
    )
