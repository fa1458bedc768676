"""Synthetic slides: deterministic, brain-like, and written as valid OME-Zarr 0.4 and 0.5."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from scipy import ndimage as ndi

from sebre_ij.synth import CLASSES, make_slide_store, synth_section, synth_slide, write_slide

SMALL = {"sections": 4, "size": (1024, 1536), "pixel_size": 12.0}


@pytest.fixture(scope="module")
def slide():
    return synth_slide(seed=3, **SMALL)


def test_classes_table():
    assert CLASSES[0] == ("background", (0, 0, 0))
    assert CLASSES[12] == ("other_brain", (128, 128, 128))
    assert len({name for name, _ in CLASSES}) == len(CLASSES) == 13


def test_deterministic_for_a_seed(slide):
    image, labels = synth_slide(seed=3, **SMALL)
    assert np.array_equal(image, slide[0]) and np.array_equal(labels, slide[1])
    other, _ = synth_slide(seed=4, **SMALL)
    assert not np.array_equal(other, image)
    a = synth_section((300, 400), np.random.default_rng(7))
    b = synth_section((300, 400), np.random.default_rng(7))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_shapes_and_dtypes(slide):
    image, labels = slide
    assert image.shape == (3, *SMALL["size"]) and image.dtype == np.uint8
    assert labels.shape == SMALL["size"] and labels.dtype == np.uint8
    assert labels.max() < len(CLASSES)
    image, labels = synth_section((300, 400), np.random.default_rng(0))
    assert image.shape == (3, 300, 400) and labels.shape == (300, 400)
    assert image.dtype == labels.dtype == np.uint8


def test_every_section_has_most_regions(slide):
    _, labels = slide
    sections, count = ndi.label(labels > 0)
    assert count == SMALL["sections"]
    for k in range(1, count + 1):
        assert len(np.unique(labels[sections == k])) >= 6


@pytest.mark.parametrize("seed", range(6))
def test_regions_are_solid_blobs(seed):
    _, labels = synth_section((450, 600), np.random.default_rng(seed))
    present = [k for k in np.unique(labels) if k]
    assert len(present) >= 6
    for k in present:
        pieces, _ = ndi.label(labels == k)
        sizes = np.bincount(pieces.ravel())[1:]
        assert sizes.max() >= 0.98 * sizes.sum(), CLASSES[k][0]


def test_glass_is_bright_and_tissue_darker(slide):
    image, labels = slide
    glass = image[:, labels == 0].astype(float)
    tissue = image[:, labels > 0].astype(float)
    assert 230 <= glass.mean() <= 252 and glass.std() < 6
    assert tissue.mean() < glass.mean() - 40
    # stained, not grey: brightfield stains absorb green more than red
    assert tissue[1].mean() < tissue[0].mean()


def test_sections_vary(slide):
    _, labels = slide
    sections, count = ndi.label(labels > 0)
    areas = [np.bincount(labels[sections == k], minlength=len(CLASSES)) for k in range(1, count + 1)]
    assert len({tuple(a) for a in areas}) == count


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
