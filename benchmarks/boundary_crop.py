"""A level-0 window across a region boundary of a finished label layer, before and after smoothing, as a PNG.

    python benchmarks/boundary_crop.py SLIDE.zarr --labels NAME --out crop.png [--size 512]

Left: the inference level copied to level 0 by nearest pixel (the layer's finer levels before
finer.py); right: the layer's level 0 as written. The window is centred on the first place, in
reading order from the level's middle, where two regions (not glass) meet at the inference level.
"""

from __future__ import annotations

import argparse

import numpy as np
from PIL import Image

from sebre_ij.labels import open_labels
from sebre_ij.pyramid import source_index
from sebre_ij.slide import open_slide


def colours(labels: np.ndarray) -> np.ndarray:
    """Each label value its own colour (glass black)."""
    rng = np.random.default_rng(0)
    table = rng.integers(40, 256, (int(labels.max()) + 1, 3), dtype=np.uint8)
    table[0] = 0
    return table[labels]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("slide")
    parser.add_argument("--labels", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()
    slide = open_slide(args.slide)
    info = open_labels(slide, args.labels)
    level = dict(info.group.attrs)["sebre"]["level"]
    arrays = [info.group[lv.path] for lv in slide.levels]
    coarse = np.asarray(arrays[level][...]).reshape(slide.yx_shape(level))
    meet = (coarse[:-1, :-1] != coarse[1:, :-1]) & (coarse[:-1, :-1] > 0) & (coarse[1:, :-1] > 0)
    ys, xs = np.nonzero(meet)
    if not len(ys):
        raise SystemExit("no boundary between two regions at the inference level")
    middle = np.argmin(np.abs(ys - coarse.shape[0] / 2) + np.abs(xs - coarse.shape[1] / 2))
    (h, w), (sh, sw) = slide.yx_shape(0), coarse.shape
    cy, cx = int((ys[middle] + 1) * h / sh), int((xs[middle] + 0.5) * w / sw)
    half = args.size // 2
    window = (slice(max(cy - half, 0), min(cy + half, h)), slice(max(cx - half, 0), min(cx + half, w)))
    after = np.asarray(arrays[0][(..., *window)]).reshape([s.stop - s.start for s in window])
    rows, cols = source_index(window, (sh, sw), (h, w))
    before = coarse[np.ix_(rows, cols)]
    gap = np.full((before.shape[0], 8, 3), 255, np.uint8)
    Image.fromarray(np.concatenate([colours(before), gap, colours(after)], axis=1)).save(args.out)
    print(f"level-0 window rows {window[0].start}:{window[0].stop}, columns {window[1].start}:{window[1].stop}")


if __name__ == "__main__":
    main()
