"""Instance mode: every connected piece of every region gets its own label, chunk by chunk.

Region mode (SeBRe's rule) keeps one label per class per section. For many small objects each
piece must be its own label, and a piece may cross chunk borders. Pieces are found per chunk,
joined across chunk borders with a union-find over the border pixels only, and written with
their final numbers: memory follows one chunk plus the chunks' borders, never the level.

The tiles' region values stay in a scratch array until the end, so relabelling can be run again
from scratch after a kill and gives the same numbers.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
from skimage.measure import label as connected

SCRATCH = "regions"  # array of the layer holding region values until instances are numbered


@dataclass
class Piece:
    """What a chunk's pieces need beyond the chunk: their region value and size, and the border."""

    offset: int
    values: np.ndarray  # region value of local piece k (index 0 unused)
    counts: np.ndarray  # pixels of local piece k
    borders: dict[str, np.ndarray] = field(default_factory=dict)  # top/bottom/left/right global ids


def _chunk_windows(shape: tuple[int, int], chunks: tuple[int, int], ran: np.ndarray | None):
    """(grid index, window) of every chunk where tiles ran, in row-major order."""
    ny, nx = -(-shape[0] // chunks[0]), -(-shape[1] // chunks[1])
    for i, j in itertools.product(range(ny), range(nx)):
        if ran is None or ran[i, j]:
            yield (
                (i, j),
                (
                    slice(i * chunks[0], min((i + 1) * chunks[0], shape[0])),
                    slice(j * chunks[1], min((j + 1) * chunks[1], shape[1])),
                ),
            )


def _pieces(block: np.ndarray, offset: int) -> tuple[np.ndarray, Piece]:
    """Label the connected pieces of equal value in one chunk, numbered from `offset` + 1."""
    local, n = connected(block, background=0, connectivity=1, return_num=True)
    values = np.zeros(n + 1, block.dtype)
    values[local.ravel()] = block.ravel()
    piece = Piece(offset, values, np.bincount(local.ravel(), minlength=n + 1))
    ids = np.where(local > 0, local + offset, 0)
    piece.borders = {"top": ids[0], "bottom": ids[-1], "left": ids[:, 0], "right": ids[:, -1]}
    return local, piece


def _roots(parent: np.ndarray) -> np.ndarray:
    """Every piece's root, by pointer jumping (vectorised; parents always point to smaller ids)."""
    while True:
        nxt = parent[parent]
        if np.array_equal(nxt, parent):
            return parent
        parent = nxt


def _find(parent: np.ndarray, a: int) -> int:
    while parent[a] != a:
        parent[a] = parent[parent[a]]
        a = parent[a]
    return a


def _join(parent: np.ndarray, values: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    """Union the pieces facing each other across a border when they hold the same region."""
    same = (a > 0) & (b > 0) & (values[a] == values[b])
    for x, y in set(zip(a[same].tolist(), b[same].tolist())):
        rx, ry = _find(parent, x), _find(parent, y)
        if rx != ry:
            parent[max(rx, ry)] = min(rx, ry)


def number_instances(
    read, write, shape: tuple[int, int], chunks: tuple[int, int], ran: np.ndarray | None
) -> list[tuple[int, int]]:
    """Relabel region values (read(window)) into instance numbers 1..N (write(window, ids)).

    Returns (region value, pixel count) per instance, in instance order: instances are numbered
    by where they first appear in row-major chunk order, so reruns give identical numbers."""
    pieces: dict[tuple[int, int], Piece] = {}
    total = 0
    for index, window in _chunk_windows(shape, chunks, ran):
        _, piece = _pieces(read(window), total)
        pieces[index] = piece
        total += len(piece.values) - 1
    values = np.zeros(total + 1, np.int64)
    counts = np.zeros(total + 1, np.int64)
    for p in pieces.values():
        values[p.offset + 1 : p.offset + len(p.values)] = p.values[1:]
        counts[p.offset + 1 : p.offset + len(p.values)] = p.counts[1:]
    parent = np.arange(total + 1)
    for (i, j), p in pieces.items():
        if (i, j + 1) in pieces:
            _join(parent, values, p.borders["right"], pieces[i, j + 1].borders["left"])
        if (i + 1, j) in pieces:
            _join(parent, values, p.borders["bottom"], pieces[i + 1, j].borders["top"])
    roots = _roots(parent)
    first = np.unique(roots[1:]) if total else np.zeros(0, np.int64)
    number = np.zeros(total + 1, np.uint32)
    number[first] = np.arange(1, len(first) + 1, dtype=np.uint32)
    final = number[roots]
    for index, window in _chunk_windows(shape, chunks, ran):
        local, _ = _pieces(read(window), pieces[index].offset)
        write(window, np.where(local > 0, final[local + pieces[index].offset], 0).astype(np.uint32))
    sizes = np.bincount(final[1:], weights=counts[1:], minlength=len(first) + 1)
    return [(int(values[g]), int(sizes[k])) for k, g in enumerate(first, start=1)]
