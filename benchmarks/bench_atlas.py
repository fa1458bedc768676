"""What one atlas training section costs (`sebre_ij.atlas.atlas_section`), printed as one JSON object.

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 taskset -c 0 python benchmarks/bench_atlas.py [--atlas DIR] [--n 50]

`load_s`: wall time of `load_atlas` (the files are likely in the page cache after the first run).
Then, at 50 and at 25 µm/px with the default recipe, `n` sections from one seeded generator after 3
untimed ones: `mean_ms` and `p90_ms` of `atlas_section`'s wall time,
the sections' mean size, and the mean time of its steps run apart on the same draws (`plane_cut_ms`:
random_plane and cut_section; `damage_ms`: damage and crop; `render_ms`). `cores`: the cores the
process may run on (1 under the taskset above: the cost a training data worker pays).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from sebre_ij.atlas import SectionRecipe, atlas_section, crop, cut_section, damage, load_atlas, picture, random_plane

DEFAULT_ATLAS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ccfv3"


def steps(atlas, recipe: SectionRecipe, rng: np.random.Generator) -> list[float]:
    """Seconds of each of atlas_section's steps, run one after another as it runs them."""
    t0 = time.perf_counter()
    section = None
    while section is None:
        plane, orientation = random_plane(atlas, recipe, rng)
        section = cut_section(atlas, plane, recipe.margin_px, orientation)
    t1 = time.perf_counter()
    section = crop(damage(section, recipe, rng), recipe.margin_px)
    t2 = time.perf_counter()
    picture(atlas, section, recipe, rng)
    return [t1 - t0, t2 - t1, time.perf_counter() - t2]


def measure(atlas, pixel_size_um: float, n: int) -> dict:
    recipe = SectionRecipe(pixel_size_um=pixel_size_um)
    rng = np.random.default_rng(0)
    for _ in range(3):
        atlas_section(atlas, recipe, rng)
    times, shapes = [], []
    for _ in range(n):
        start = time.perf_counter()
        _, classes, _ = atlas_section(atlas, recipe, rng)
        times.append(time.perf_counter() - start)
        shapes.append(classes.shape)
    rng = np.random.default_rng(0)
    parts = np.mean([steps(atlas, recipe, rng) for _ in range(n)], axis=0) * 1e3
    return {
        "mean_ms": round(float(np.mean(times)) * 1e3, 2),
        "p90_ms": round(float(np.percentile(times, 90)) * 1e3, 2),
        "mean_shape": [round(float(s)) for s in np.mean(shapes, axis=0)],
        "sections": n,
        "plane_cut_ms": round(float(parts[0]), 2),
        "damage_ms": round(float(parts[1]), 2),
        "render_ms": round(float(parts[2]), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--atlas", default=os.environ.get("SEBRE_ATLAS", str(DEFAULT_ATLAS)))
    parser.add_argument("--n", type=int, default=50)
    args = parser.parse_args()
    start = time.perf_counter()
    atlas = load_atlas(args.atlas)
    load_s = time.perf_counter() - start
    result = {"load_s": round(load_s, 2), "cores": len(os.sched_getaffinity(0))}
    for pixel in (50.0, 25.0):
        result[f"{pixel:g}um"] = measure(atlas, pixel, args.n)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
