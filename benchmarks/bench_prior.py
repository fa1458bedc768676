"""What the atlas prior costs per section, beside the shipped model's own time on the same tile, as JSON.

    python benchmarks/bench_prior.py [--sections 8] [--threads 1]

Each section is a 320 px tile at 50 µm/px holding a coronal cut of the package's class volume at a
random anteroposterior position and in-plane angle, as class probabilities of a model that errs in
patches (right at 0.6, a dozen blobs of a wrong region, soft boundaries). `AtlasPrior.apply` runs on
it (fit and fuse: `prior_s`), and the shipped model runs its semantic branch on a tile of that size
(`model_s`, one view; mirrored views are four). `mended` is the share of the brain's pixels whose
class the prior set right, less the share the erring probabilities had right.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch
from scipy import ndimage as ndi

from sebre_ij.atlas_prior import AtlasPrior, Plane, cut, read_volume, section_points
from sebre_ij.catalog import SHIPPED
from sebre_ij.checkpoint import load_checkpoint
from sebre_ij.model import detect

TILE, PX_MM = 320, 0.05


def section(rng) -> tuple[np.ndarray, np.ndarray]:
    """(truth classes, erring probabilities) of one random coronal section in a tile."""
    volume = read_volume()
    plane = Plane(5.7, rng.uniform(3.0, 9.0), 3.8, 0.0, 0.0, rng.uniform(0, 2 * math.pi), 1.0, 1.0)
    ys, xs = np.mgrid[0:TILE, 0:TILE]
    points = section_points(ys.ravel(), xs.ravel(), np.array([TILE / 2, TILE / 2]), PX_MM)
    truth = cut(volume, plane, points).reshape(TILE, TILE)
    labels = truth.copy()
    by, bx = np.nonzero(truth > 0)
    for i in rng.choice(len(by), 12, replace=False):
        blob = (ys - by[i]) ** 2 + (xs - bx[i]) ** 2 < rng.uniform(8, 12) ** 2
        labels[blob & (truth > 0)] = rng.choice([1, 2, 4, 5, 6, 7])
    n = len(volume.names)
    p = np.full((n, TILE, TILE), 0.4 / (n - 1), np.float32)
    np.put_along_axis(p, labels[None].astype(np.int64), 0.6, axis=0)
    p = ndi.gaussian_filter(p, (0, 1.0, 1.0))
    return truth, p / p.sum(axis=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    prior = AtlasPrior.for_model(list(read_volume().names), 50.0, 1.0)
    _ = read_volume().coronal_centres  # the volume's one-off setup, untimed
    times, mended = [], []
    for _ in range(args.sections):
        truth, p = section(rng)
        start = time.perf_counter()
        out = prior.apply(p)
        times.append(time.perf_counter() - start)
        brain = truth > 0
        mended.append(
            float(np.mean(out.argmax(0)[brain] == truth[brain]) - np.mean(p.argmax(0)[brain] == truth[brain]))
        )
    model, card = load_checkpoint(SHIPPED, "cpu")
    tile = [torch.rand(len(card.channels), card.tile_size, card.tile_size)]
    with torch.inference_mode():
        detect(model, tile, instances=False)
        start = time.perf_counter()
        for _ in range(5):
            detect(model, tile, instances=False)
    model_s = (time.perf_counter() - start) / 5
    print(
        json.dumps(
            {
                "sections": args.sections,
                "threads": args.threads,
                "prior_s_mean": round(float(np.mean(times)), 3),
                "prior_s_max": round(float(np.max(times)), 3),
                "model_s_per_tile": round(model_s, 3),
                "prior_over_model": round(float(np.mean(times)) / model_s, 1),
                "mended_mean": round(float(np.mean(mended)), 3),
                "mended_min": round(float(np.min(mended)), 3),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
