"""Instance mode: every connected piece its own label, found chunk by chunk and joined across
chunk borders, equal (up to numbering) to connected components of the whole image."""

import subprocess

import numpy as np
import pytest
import zarr
from conftest import SEBRE, oracle
from ome_zarr_models.v04.image_label import ImageLabel
from skimage.measure import label as connected

from sebre_ij.instances import number_instances
from sebre_ij.labels import class_base
from sebre_ij.layer import create_layer
from sebre_ij.model import ModelCard
from sebre_ij.rois import read_roiset
from sebre_ij.segment import number_layer, run_tiles
from sebre_ij.slide import open_slide
from sebre_ij.stores import write_slide
from sebre_ij.synth import CLASSES, synth_slide


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Two label images are equal up to renumbering (and share the background)."""
    if not np.array_equal(a > 0, b > 0):
        return False
    pairs = np.unique(np.stack([a[a > 0], b[b > 0]]), axis=1)
    return len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


def in_memory(values: np.ndarray):
    out = np.zeros(values.shape, np.uint32)

    def write(window, ids):
        out[window] = ids

    return (lambda window: values[window]), write, out


@pytest.mark.parametrize("chunks", [(7, 9), (16, 16), (64, 64)])
def test_chunked_numbering_equals_whole_image_components(chunks):
    rng = np.random.default_rng(1)
    values = rng.choice([0, 101, 102, 205], size=(60, 75), p=[0.4, 0.3, 0.2, 0.1]).astype(np.uint32)
    read, write, out = in_memory(values)
    found = number_instances(read, write, values.shape, chunks, None)
    assert same_partition(out, connected(values, background=0, connectivity=1))
    assert [k for k in range(1, len(found) + 1)] == sorted(np.unique(out[out > 0]).tolist())
    for k, (value, pixels) in enumerate(found, 1):  # each instance's region value and size
        assert (values[out == k] == value).all() and (out == k).sum() == pixels
    first = [out.ravel()[np.flatnonzero(out.ravel() == k)[0]] for k in range(1, 4)]
    assert first == [1, 2, 3] or len(found) < 3
    read2, write2, again = in_memory(values)
    assert number_instances(read2, write2, values.shape, chunks, None) == found and np.array_equal(again, out)


def test_a_spiral_across_many_chunks_is_one_instance():
    values = np.zeros((64, 64), np.uint32)
    values[2, 2:62] = values[2:62, 61] = values[61, 2:62] = values[10:62, 2] = values[10, 2:50] = 7
    read, write, out = in_memory(values)
    found = number_instances(read, write, values.shape, (8, 8), None)
    assert found == [(7, int((values > 0).sum()))]


def blobs(shape, n, rng):
    """Class map with many small round objects of two classes, some crossing tile borders."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    out = np.zeros(shape, np.uint8)
    for _ in range(n):
        cy, cx, r = rng.integers(0, shape[0]), rng.integers(0, shape[1]), rng.integers(3, 9)
        out[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.integers(1, 3)
    return out


@pytest.mark.parametrize("tile, overlap", [(64, 16), (96, 32)])
def test_oracle_instances_match_connected_components(tmp_path, tile, overlap):
    rng = np.random.default_rng(3)
    image, labels = synth_slide(1, (512, 512), 16.0, 2)
    write_slide(tmp_path / "s.zarr", image, labels, 16.0, levels=1, chunk=128)
    slide = open_slide(tmp_path / "s.zarr")
    truth = np.where(labels > 0, blobs(labels.shape, 150, rng), 0)
    names = [n for n, _ in CLASSES]
    card = ModelCard(
        "tiny_fpn", names, [c for _, c in CLASSES], 16.0, slide.channels, [0.5] * 3, [0.2] * 3, tile, overlap
    )

    layer = create_layer(slide, "inst", 0, scratch=True)
    run_tiles(slide, layer, card, oracle(truth))
    found = number_layer(layer)
    out = np.asarray(layer.group["s0"][:])
    regions = np.asarray(layer.group["regions"][:])
    assert len(found) > 20
    assert same_partition(out, connected(regions, background=0, connectivity=1))
    assert np.array_equal(regions % class_base(len(names)), truth * (regions > 0))


def test_segment_instance_mode(trained_slide, tmp_path):
    from conftest import copy_slide

    slide, model = trained_slide
    store = copy_slide(slide, tmp_path)
    proc = subprocess.run(
        [
            *SEBRE,
            "segment",
            str(store),
            "--model",
            str(model),
            "--mode",
            "instance",
            "--labels",
            "pieces",
            "--rois",
            str(tmp_path / "r.zip"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    layer = zarr.open_group(str(store / "labels" / "pieces"), mode="r")
    ImageLabel.from_zarr(layer)
    assert "regions" not in layer  # the scratch array is gone
    names = [r.name for r in read_roiset(tmp_path / "r.zip")]
    assert names and all(n.rsplit("-", 1)[1].isdigit() for n in names)
    assert len(set(names)) == len(names)
    bad = subprocess.run(
        [*SEBRE, "segment", str(store), "--model", str(model), "--mode", "cells", "--labels", "x"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert bad.returncode == 2 and "--mode" in bad.stderr
