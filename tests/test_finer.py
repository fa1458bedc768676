"""Finer levels: smooth outlines from the class margins, constant chunks stored once, cost near outlines."""

import numpy as np
import pytest
import zarr

import sebre_ij.finer
from sebre_ij.finer import Axis, Band, finer_chunk, outline_labels, vote
from sebre_ij.layer import MARGIN, create_layer
from sebre_ij.pyramid import build_pyramid
from sebre_ij.slide import open_slide
from sebre_ij.stitch import quantized
from sebre_ij.stores import write_slide

SHAPE, CHUNK, LEVELS = (1024, 1024), 64, 4  # level 3 (128 px) is the inference level, level 0 8 x finer


def oblique(shape):
    """Class 1 on one side of a straight oblique line, 2 on the other, as a model's probabilities
    ramp across it: p(1) = 0.5 + 0.1 d (d: signed distance in inference pixels), and the margin
    |p(1) - p(2)|. Returns the labels, the margins and the line's (a, b, c): a x + b y = c."""
    a, b = np.cos(0.4), np.sin(0.4)
    c = a * shape[1] / 2 + b * shape[0] / 2 + 0.3
    y, x = np.mgrid[: shape[0], : shape[1]]
    d = a * x + b * y - c
    p = np.clip(0.5 + 0.1 * d, 0, 1)
    return np.where(d > 0, 101, 102).astype(np.uint32), np.abs(2 * p - 1), (a, b, c)


def layer_with(path, name, values, margins):
    slide = open_slide(path)
    layer = create_layer(slide, name, LEVELS - 1)
    window = tuple(slice(0, n) for n in values.shape)
    layer.write(0, window, values)
    if margins is not None:
        layer.write(0, window, quantized(margins), MARGIN)
    build_pyramid(layer)
    return layer


def outline_distance(level0: np.ndarray, origin: int, line, src: int, dst: int) -> np.ndarray:
    """Distance, in level-0 pixels, from the line to the centres of the pixels of a crop of level 0
    (starting at row and column `origin`) whose right or lower neighbour has another label: the outline."""
    a, b, c = line
    ys, xs = np.nonzero((level0[:-1, :-1] != level0[1:, :-1]) | (level0[:-1, :-1] != level0[:-1, 1:]))
    ys, xs = ys + origin, xs + origin
    axis = Axis(src, dst)
    u, v = axis.position(xs), axis.position(ys)  # in inference pixels
    return np.abs(a * u + b * v - c) * dst / src


def test_level0_outline_follows_a_straight_line_of_the_class_probabilities(tmp_path):
    """Where the class probabilities change along a straight oblique line, level 0's outline stays
    within 2 level-0 px of it; copied by nearest pixel (no margins), it misses by up to half an
    inference pixel (4 px here)."""
    path = tmp_path / "s.zarr"
    write_slide(path, np.full((3, *SHAPE), 240, np.uint8), np.zeros(SHAPE, np.uint8), 1.0, chunk=CHUNK, levels=LEVELS)
    values, margins, line = oblique((128, 128))
    smooth = layer_with(path, "smooth", values, margins)
    nearest = layer_with(path, "nearest", values, None)
    inner = (slice(16, 1008), slice(16, 1008))  # away from the level's edges, where the cells are clipped
    got = outline_distance(np.asarray(smooth.array(0)[inner]), 16, line, 128, 1024)
    old = outline_distance(np.asarray(nearest.array(0)[inner]), 16, line, 128, 1024)
    assert len(got) > 900 and got.max() <= 2.0
    assert old.max() > 3.0


def test_inference_level_and_coarser_are_byte_identical_whatever_the_margins(tmp_path):
    """Margins change only the finer levels: the inference level's chunk files and the coarser
    levels' are the same bytes as a layer without margins."""
    path = tmp_path / "s.zarr"
    write_slide(path, np.full((3, *SHAPE), 240, np.uint8), np.zeros(SHAPE, np.uint8), 1.0, chunk=CHUNK, levels=LEVELS)
    values, margins, _ = oblique((128, 128))
    layer_with(path, "smooth", values, margins)
    layer_with(path, "nearest", values, None)
    root = path / "labels"
    for level in range(LEVELS):
        smooth, nearest = root / "smooth" / f"s{level}", root / "nearest" / f"s{level}"
        files = sorted(p.relative_to(smooth) for p in smooth.rglob("*") if p.is_file())
        assert files == sorted(p.relative_to(nearest) for p in nearest.rglob("*") if p.is_file())
        same = [(smooth / f).read_bytes() == (nearest / f).read_bytes() for f in files]
        assert all(same) if level >= LEVELS - 1 else not all(same)


def test_constant_chunks_are_encoded_once_per_value_and_glass_left_out(tmp_path):
    """Inside a region every level-0 chunk is the same bytes, encoded once; chunks of only the fill
    value (0) are no files; zarr reads the layer back as computed."""
    path = tmp_path / "s.zarr"
    write_slide(path, np.full((3, *SHAPE), 240, np.uint8), np.zeros(SHAPE, np.uint8), 1.0, chunk=CHUNK, levels=LEVELS)
    values = np.zeros((128, 128), np.uint32)
    values[16:112, 16:64], values[16:112, 64:112] = 101, 203
    layer = layer_with(path, "regions", values, np.full(values.shape, 0.5))
    level0 = layer.array(0)
    assert sorted(level0._constant) == [101, 203]  # encoded once each
    read = np.asarray(zarr.open_array(path / "labels" / "regions" / "s0", mode="r")[:])
    np.testing.assert_array_equal(read, np.asarray(level0[:]))
    for value in (101, 203):
        whole = [
            (r, c)
            for r in range(1024 // CHUNK)
            for c in range(1024 // CHUNK)
            if (read[r * CHUNK : (r + 1) * CHUNK, c * CHUNK : (c + 1) * CHUNK] == value).all()
        ]
        stored = [(path / "labels" / "regions" / "s0" / str(r) / str(c)).read_bytes() for r, c in whole]
        assert len(whole) > 20 and all(data == level0._constant[value] for data in stored)
    glass = [
        (r, c)
        for r in range(16)
        for c in range(16)
        if not read[r * CHUNK : (r + 1) * CHUNK, c * CHUNK : (c + 1) * CHUNK].any()
    ]
    assert glass and not any((path / "labels" / "regions" / "s0" / str(r) / str(c)).exists() for r, c in glass)


def test_runs_give_the_pixel_rule_at_every_pixel():
    """Runs split in closed form are exact: a chunk computed as runs equals the pixel rule at each
    pixel, with three and four labels meeting and unknown margins among known ones."""
    rng = np.random.default_rng(0)
    values = rng.integers(1, 4, (12, 12)).astype(np.uint32)
    values[:6, :6] = 1
    margins = rng.integers(0, 65535, (12, 12)).astype(np.uint16)
    margins[6:, :4] = 0
    band = Band(values, margins, 0)
    rows, cols = Axis(12, 300), Axis(12, 300)
    window = (slice(0, 300), slice(0, 300))
    got = finer_chunk(band, rows, cols, window)
    ys, xs = (a.ravel() for a in np.mgrid[0:300, 0:300])
    want = vote(band, rows, cols, ys, xs)[0].reshape(300, 300)
    np.testing.assert_array_equal(got, want)
    assert finer_chunk(band, rows, cols, (slice(0, 100), slice(0, 100))) == 1  # one value: an int


@pytest.mark.parametrize("pixelwise", [0, 10**9])  # every cell pixel by pixel; none (runs throughout)
@pytest.mark.parametrize("seed", range(12))
def test_a_row_of_chunks_done_together_equals_the_pixel_rule(monkeypatch, seed, pixelwise):
    """Several chunks of a row (some side by side) at once, at factors that divide and that do not,
    with equal margins (ties within rounding), unknown ones and three labels: each chunk is the
    pixel rule's labels as a C-ordered array, and says whether it holds one value."""
    monkeypatch.setattr(sebre_ij.finer, "PIXELWISE", pixelwise)
    rng = np.random.default_rng(seed)
    n, factor, side = int(rng.integers(6, 14)), [2, 4, 7, 8, 25, 64][seed % 6], [5, 16, 33][seed % 3]
    values = rng.integers(1, 4, (n, n)).astype(np.uint32)
    if seed % 3 == 0:  # two labels either side of a diagonal
        values = np.where(np.add.outer(np.arange(n), np.arange(n)) > n, 1, 2).astype(np.uint32)
    margins = rng.integers(0, 65535, (n, n)).astype(np.uint16)
    if seed % 4 == 1:
        margins[:] = 7
    if seed % 5 == 2:
        margins[: n // 2] = 0
    band, axis = Band(values, margins, 0), Axis(n, n * factor)
    starts = sorted({int(c) for c in rng.integers(0, max(1, n * factor // side), 4)} | {0, 1})
    windows = [slice(c * side, min((c + 1) * side, n * factor)) for c in starts if c * side < n * factor]
    ys = slice(min(side, n * factor - 1), min(2 * side, n * factor))
    parts, one = outline_labels(band, axis, axis, ys, windows)
    for xs, part, alone in zip(windows, parts, one):
        yy, xx = (a.ravel() for a in np.mgrid[ys, xs])
        want = vote(band, axis, axis, yy, xx)[0].reshape(part.shape)
        np.testing.assert_array_equal(part, want)
        assert part.flags.c_contiguous and alone == (want.min() == want.max())


def test_only_chunks_over_tiles_are_written_from_a_band_cut_to_their_columns(tmp_path):
    """On a sparse slide a band reads only the columns under its tiles (and a finer chunk's width
    beside them): the chunks over the tiles are the pixel rule's over the whole level, and the
    chunks over no tile are no files."""
    path = tmp_path / "s.zarr"
    write_slide(path, np.full((3, *SHAPE), 240, np.uint8), np.zeros(SHAPE, np.uint8), 1.0, chunk=CHUNK, levels=LEVELS)
    values, margins, _ = oblique((128, 128))
    slide = open_slide(path)
    layer = create_layer(slide, "sparse", LEVELS - 1)
    layer.write(0, (slice(0, 128), slice(0, 128)), values)
    layer.write(0, (slice(0, 128), slice(0, 128)), quantized(margins), MARGIN)
    layer.tiled_chunks = np.array([[False, False], [False, True]])  # one tile's chunk: rows and columns 64-127
    build_pyramid(layer)
    band, axis = Band(values, quantized(margins), 0), Axis(128, 1024)
    level0 = zarr.open_array(path / "labels" / "sparse" / "s0", mode="r")
    for r in range(1024 // CHUNK):
        for c in range(1024 // CHUNK):
            window = (slice(r * CHUNK, (r + 1) * CHUNK), slice(c * CHUNK, (c + 1) * CHUNK))
            over = max(axis.upper(window[0].stop - 1), axis.upper(window[1].stop - 1)) >= 64
            over &= min(axis.upper(window[0].stop - 1), axis.upper(window[1].stop - 1)) >= 64
            stored = (path / "labels" / "sparse" / "s0" / str(r) / str(c)).exists()
            if not over:
                assert not stored
            else:
                want = finer_chunk(band, axis, axis, window)
                np.testing.assert_array_equal(np.asarray(level0[window]), np.broadcast_to(want, (CHUNK, CHUNK)))
