"""stores.py: synthetic slides written as valid OME-Zarr 0.4 and 0.5, with their truth layer."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from sebre_ij.stores import make_slide_store, write_slide
from sebre_ij.synth import CLASSES, synth_slide

SMALL = {"sections": 4, "size": (1024, 1536), "pixel_size": 12.0}


@pytest.fixture(scope="module")
def slide():
    return synth_slide(seed=3, **SMALL)


def _ome(group: zarr.Group, ngff: str) -> dict:
    return group.attrs["ome"] if ngff == "0.5" else dict(group.attrs)


def _validate(group: zarr.Group, ngff: str) -> None:
    if ngff == "0.4":
        from ome_zarr_models.v04.image import Image
        from ome_zarr_models.v04.image_label import ImageLabel
    else:
        from ome_zarr_models.v05.image import Image
        from ome_zarr_models.v05.image_label import ImageLabel
    assert Image.from_zarr(group).labels is not None
    ImageLabel.from_zarr(group["labels/truth"])


@pytest.mark.parametrize("ngff", ["0.4", "0.5"])
def test_write_slide(tmp_path, slide, ngff):
    image, labels = slide
    path = tmp_path / "slide.zarr"
    write_slide(path, image, labels, SMALL["pixel_size"], ngff=ngff, chunk=128)
    group = zarr.open_group(str(path), mode="r")
    assert group.metadata.zarr_format == (2 if ngff == "0.4" else 3)
    _validate(group, ngff)

    meta = _ome(group, ngff)
    (multiscale,) = meta["multiscales"]
    assert [a["name"] for a in multiscale["axes"]] == ["c", "y", "x"]
    assert [c["label"] for c in meta["omero"]["channels"]] == ["R", "G", "B"]
    datasets = multiscale["datasets"]
    assert len(datasets) == 3  # 1024 -> 512 -> 256
    for i, dataset in enumerate(datasets):
        scale = dataset["coordinateTransformations"][0]
        assert scale["type"] == "scale"
        assert scale["scale"] == [1.0, SMALL["pixel_size"] * 2**i, SMALL["pixel_size"] * 2**i]
        assert group[dataset["path"]].shape == (3, 1024 >> i, 1536 >> i)
    assert np.array_equal(group[datasets[0]["path"]][:], image)

    truth = group["labels/truth"]
    assert _ome(group["labels"], ngff)["labels"] == ["truth"]
    truth_meta = _ome(truth, ngff)
    levels = truth_meta["multiscales"][0]["datasets"]
    assert len(levels) == len(datasets)
    assert np.array_equal(truth[levels[0]["path"]][:], labels)
    present = set(np.unique(labels)) - {0}
    for dataset in levels[1:]:
        assert set(np.unique(truth[dataset["path"]][:])) - {0} <= present  # nearest: no new values
    image_label = truth_meta["image-label"]
    assert {c["label-value"] for c in image_label["colors"]} == present
    names = {p["label-value"]: (p["name"], p["class"]) for p in image_label["properties"]}
    assert names == {k: (CLASSES[k][0], k) for k in present}


def test_write_slide_levels_and_existing_path(tmp_path, slide):
    image, labels = slide
    path = tmp_path / "slide.zarr"
    write_slide(path, image, labels, 12.0, levels=2)
    group = zarr.open_group(str(path), mode="r")
    assert len(group.attrs["multiscales"][0]["datasets"]) == 2
    with pytest.raises(FileExistsError):
        write_slide(path, image, labels, 12.0)


def test_make_slide_store_writes_the_seeded_slide(tmp_path, slide):
    path = tmp_path / "slide.zarr"
    make_slide_store(path, seed=3, ngff="0.5", **SMALL)
    truth = zarr.open_group(str(path), mode="r")["labels/truth"]
    level0 = truth.attrs["ome"]["multiscales"][0]["datasets"][0]["path"]
    assert np.array_equal(truth[level0][:], slide[1])
