"""NGFF 0.4 and 0.5: the format objects write each version as its spec and ome-zarr-models want,
and sebre reads both back alike."""

import numpy as np
import pytest
import zarr
from ome_zarr_models.v04.image import Image as ImageV04
from ome_zarr_models.v04.image_label import ImageLabel as ImageLabelV04
from ome_zarr_models.v05.image import Image as ImageV05
from ome_zarr_models.v05.image_label import ImageLabel as ImageLabelV05

from sebre_ij.labels import open_labels, read_plane
from sebre_ij.layer import create_layer, finish_layer
from sebre_ij.ngff import VERSIONS, NgffV04, NgffV05, ngff_format, ome_attrs
from sebre_ij.pyramid import build_pyramid
from sebre_ij.slide import open_slide
from sebre_ij.stores import write_slide

MODELS = {"0.4": (ImageV04, ImageLabelV04), "0.5": (ImageV05, ImageLabelV05)}


def test_one_format_object_per_version():
    assert VERSIONS == ("0.4", "0.5")
    assert isinstance(ngff_format("0.4"), NgffV04) and isinstance(ngff_format("0.5"), NgffV05)
    for version in VERSIONS:
        fmt = ngff_format(version)
        assert fmt.version == fmt.writer_format().version == version
        assert fmt.zarr_format == fmt.writer_format().zarr_format
    with pytest.raises(ValueError, match="'0.3' is not one of 0.4, 0.5"):
        ngff_format("0.3")


@pytest.mark.parametrize("version", VERSIONS)
def test_attrs_written_where_they_are_read(tmp_path, version):
    fmt = ngff_format(version)
    group = zarr.open_group(tmp_path / "g.zarr", mode="w", zarr_format=fmt.zarr_format)
    group.attrs["sebre"] = {"level": 1}  # not NGFF metadata: kept by either version's writes
    fmt.set_attrs(group, fmt.labels_attrs({"labels": ["a"]}))
    fmt.set_attrs(group, fmt.labels_attrs({**ome_attrs(group), "labels": ["a", "b"]}))
    reread = zarr.open_group(tmp_path / "g.zarr", mode="r")
    assert ome_attrs(reread)["labels"] == ["a", "b"] and reread.attrs["sebre"] == {"level": 1}
    assert ("version" in ome_attrs(reread)) == (version == "0.5")  # 0.5 alone has it on the labels group
    assert ("ome" in reread.attrs) == (version == "0.5")


def test_ome_attrs_reads_either_place():
    class Group:
        def __init__(self, attrs):
            self.attrs = attrs

    assert ome_attrs(Group({"multiscales": [1], "omero": {}})) == {"multiscales": [1], "omero": {}}
    ome = {"version": "0.5", "labels": ["x"]}
    assert ome_attrs(Group({"ome": ome, "other": 1})) == ome
    assert ome_attrs(Group({"ome": "not an object", "multiscales": [1]})) == {}


def _store(tmp_path, version: str, values: np.ndarray):
    """A slide of `version` written by synth (its image and truth) and by layer.py (the layer "pred")."""
    path = tmp_path / f"s{version}.zarr"
    write_slide(
        path,
        np.full((3, 384, 640), 240, np.uint8),
        (values % 13).astype(np.uint8),
        2.0,
        ngff=version,
        chunk=128,
        levels=3,
    )
    slide = open_slide(path)
    layer = create_layer(slide, "pred", level=1)
    layer.write(0, (slice(0, 192), slice(0, 320)), values[::2, ::2])
    build_pyramid(layer)
    props = [{"label-value": int(v), "class": int(v) % 100, "section": int(v) // 100} for v in np.unique(values) if v]
    finish_layer(
        layer,
        props,
        [{"label-value": p["label-value"], "rgba": [p["class"], 0, 9, 255]} for p in props],
        {"model": "m"},
    )
    return path


def test_stores_of_both_versions_validate_and_read_back_alike(tmp_path):
    values = np.zeros((384, 640), np.uint32)
    values[40:300, 60:200] = 103
    values[100:380, 400:630] = 207
    read = {}
    for version in VERSIONS:
        path = _store(tmp_path, version, values)
        root = zarr.open_group(path, mode="r")
        assert root.metadata.zarr_format == ngff_format(version).zarr_format
        image_model, label_model = MODELS[version]
        assert image_model.from_zarr(root).labels is not None  # the labels group and each layer listed in it
        label_model.from_zarr(root["labels/pred"])
        chunk = path / "labels" / "pred" / "s0" / ("0/0" if version == "0.4" else "c/0/0")
        assert chunk.is_file()  # each version's chunk keys
        slide = open_slide(path)
        info = open_labels(slide, "pred")
        read[version] = (
            slide.version,
            slide.ngff,
            slide.axes,
            slide.channels,
            [(lv.shape, lv.scale) for lv in slide.levels],
            slide.label_names(),
            info.properties,
            info.colors,
            info.paths,
            [read_plane(info, slide, level) for level in range(3)],
            [read_plane(open_labels(slide, "truth"), slide, level) for level in range(3)],
        )
    v04, v05 = read["0.4"], read["0.5"]
    assert v04[0] == "0.4" and isinstance(v04[1], NgffV04) and v05[0] == "0.5" and isinstance(v05[1], NgffV05)
    assert v04[2:-2] == v05[2:-2]
    for planes04, planes05 in zip(v04[-2:], v05[-2:]):
        for a, b in zip(planes04, planes05):
            np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(v04[-2][0], values)  # level 0 of the layer: level 1 upsampled
