"""Chunk files: what they write, zarr reads back, and they read what zarr writes, file for file."""

import os

import numcodecs
import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, GzipCodec, ShardingCodec
from zarr.storage import MemoryStore

from sebre_ij.chunkfiles import ChunkFiles, chunk_files
from sebre_ij.layer import PARTIAL, create_layer
from sebre_ij.slide import open_slide
from sebre_ij.stores import make_slide_store

SHAPE, CHUNKS = (2, 37, 53), (1, 8, 16)  # edge chunks on both axes


def _pair(tmp_path, zarr_format: int, compressors):
    """Two empty arrays alike: one written through chunk files, one through zarr."""
    extra = (
        {"chunk_key_encoding": {"name": "v2", "separator": "/"}}
        if zarr_format == 2
        else {"dimension_names": ["z", "y", "x"]}
    )
    if compressors is not None:
        extra["compressors"] = compressors
    return [
        zarr.create_array(
            tmp_path / name, shape=SHAPE, chunks=CHUNKS, dtype="u4", fill_value=0, zarr_format=zarr_format, **extra
        )
        for name in ("ours.zarr", "zarr.zarr")
    ]


def _files(root) -> dict[str, bytes]:
    return {
        os.path.relpath(os.path.join(d, f), root): open(os.path.join(d, f), "rb").read()
        for d, _, fs in os.walk(root)
        for f in fs
        if not f.startswith((".z", "zarr.json"))
    }


@pytest.mark.parametrize(
    "zarr_format, compressors",
    [(2, None), (3, None), (2, numcodecs.Blosc(cname="lz4")), (3, BloscCodec(cname="zstd", shuffle="bitshuffle"))],
)
def test_writes_and_reads_as_zarr_does(tmp_path, zarr_format, compressors):
    ours, theirs = _pair(tmp_path, zarr_format, compressors)
    files = chunk_files(ours)
    assert files is not None
    rng = np.random.default_rng(zarr_format)
    for step in range(200):  # windows of any size and place, whole chunks and parts, labels and zeros
        z = int(rng.integers(0, 2))
        (y0, y1), (x0, x1) = sorted(rng.integers(0, 38, 2)), sorted(rng.integers(0, 54, 2))
        values = (rng.integers(0, 3, (y1 - y0, x1 - x0)) * 101 * rng.integers(0, 2)).astype("u4")
        files[z, y0:y1, x0:x1] = values
        theirs[z, y0:y1, x0:x1] = values
        if step % 20 == 19:
            assert np.array_equal(ours[:], theirs[:]), step  # zarr reads what chunk files wrote
            assert np.array_equal(files[:, 5:30], theirs[:, 5:30]), step  # and chunk files read it back
    assert _files(ours.store.root).keys() == _files(theirs.store.root).keys()  # the same chunks, empty ones left out
    assert np.array_equal(files[1], theirs[1]) and files[1].shape == SHAPE[1:]


def test_reads_what_zarr_wrote(tmp_path):
    ours, theirs = _pair(tmp_path, 3, None)
    values = np.arange(np.prod(SHAPE), dtype="u4").reshape(SHAPE)
    theirs[:] = values
    files = chunk_files(theirs)
    assert np.array_equal(files[:], values)
    assert np.array_equal(files[1, 9:33, 15:17], values[1, 9:33, 15:17])


def test_arrays_zarr_must_handle(tmp_path):
    """Arrays whose chunks are not bytes then one known compressor stay with zarr."""
    kinds = {
        "in memory": dict(store=MemoryStore()),
        "sharded": dict(store=tmp_path / "sharded.zarr", serializer=ShardingCodec(chunk_shape=(1, 4, 8))),
        "filtered": dict(store=tmp_path / "filtered.zarr", zarr_format=2, filters=[numcodecs.Delta("u4")]),
        "gzip": dict(store=tmp_path / "gzip.zarr", compressors=GzipCodec()),
    }
    for kind, extra in kinds.items():
        array = zarr.create_array(shape=SHAPE, chunks=CHUNKS, dtype="u4", fill_value=0, **extra)
        assert chunk_files(array) is None, kind


def test_failed_write_keeps_the_chunk(tmp_path, monkeypatch):
    """A write cut short leaves the chunk as it was and no temporary file (a kill leaves one that
    create_layer's sweep knows by name)."""
    ours, _ = _pair(tmp_path, 3, None)
    files = chunk_files(ours)
    files[0, 0:8, 0:16] = 7
    made = []

    def fail(src, dst):
        made.append(os.path.basename(src))
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        files[0, 0:8, 0:16] = 9
    monkeypatch.undo()
    assert PARTIAL.search(made[0])
    assert (ours[0, 0:8, 0:16] == 7).all()
    assert not [f for f in _files(ours.store.root) if f.endswith(".partial")]


@pytest.mark.parametrize("ngff", ["0.4", "0.5"])
def test_label_layers_write_chunk_files(tmp_path, ngff):
    """The layer's own arrays (NGFF 0.4: zarr v2, 0.5: v3) are ones chunk files can write."""
    make_slide_store(tmp_path / "s.zarr", sections=1, size=(512, 512), ngff=ngff)
    slide = open_slide(tmp_path / "s.zarr")
    layer = create_layer(slide, "x", 0)
    assert all(isinstance(layer.array(level), ChunkFiles) for level in range(len(slide.levels)))


def test_clear_removes_a_chunk_file_and_costs_nothing_in_a_folder_it_made(tmp_path):
    """clear() removes a stored chunk; in a row folder this object made (or found missing), it
    knows no other writer's file can be there and leaves the folder alone."""
    array = zarr.create_array(
        tmp_path / "a.zarr", shape=(8, 8), chunks=(4, 4), dtype="uint32", fill_value=0, zarr_format=2
    )
    files = chunk_files(array)
    files.write_constant((0, 0), 5)
    stored = tmp_path / "a.zarr" / array.metadata.encode_chunk_key((0, 0))
    assert stored.exists()
    other = chunk_files(zarr.open_array(tmp_path / "a.zarr", mode="r+"))  # a later try: did not make the folder
    other.clear((0, 0))
    assert not stored.exists()
    files.clear((1, 1))  # a folder missing: nothing to remove
    np.testing.assert_array_equal(np.asarray(array[:]), 0)
