"""What a training step and a training tile cost on the CPU, printed as one JSON object.

    python benchmarks/bench_train.py [--atlas DIR] [--data DIR] [--pixel-size 50] [--tile-size 320]
                                     [--batch-size 4] [--threads 2] [--steps 12] [--tiles 40]

Tiles (one process, one torch thread, `--tiles` of each after 3 untimed ones, the luminance
augmentation): `atlas_tile_ms`, a tile of a new atlas section (`sampling.AtlasTiles.tile`: generate,
convert to luminance, place, warp, photometry); `real_tile_ms`, a tile of a GLTa section already
converted (`sampling.TileSampler.tile`); `atlas_section_ms`, the generated and converted section
alone; `targets_ms`, Mask R-CNN's targets of a tile (`train.targets_from_classes`).

Steps (`--threads` torch threads, `tiny_fpn` with its semantic branch, one luminance channel,
batches built beforehand from a 70/30 mix of atlas and real tiles so that only the network is
timed; `--steps` after 3 untimed ones, which run before the weights settle): `steps_per_s_full`
with every loss, `steps_per_s_semantic` with the semantic branch alone (instance_loss=0).
`data_s_per_step_full` and `_semantic` are what building one batch costs in the training process
(workers=0; the semantic branch alone needs no instance targets): a step takes about the
network's time plus that.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from sebre_ij.atlas import SectionRecipe
from sebre_ij.augment import Augmentation
from sebre_ij.datasets import shared_examples
from sebre_ij.model import ModelCard, build_model
from sebre_ij.model_input import LUMINANCE
from sebre_ij.sampling import AtlasTiles, AtlasView, MixedTiles, TileSampler, model_view, shared_atlas
from sebre_ij.tile_batches import semantic_target, targets_from_classes
from sebre_ij.train import train_step

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def per_call_ms(fn, n: int, warm: int = 3) -> float:
    for _ in range(warm):
        fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return round((time.perf_counter() - start) / n * 1e3, 2)


def tile_costs(atlas: AtlasTiles, real: TileSampler, n: int) -> dict:
    rng = np.random.default_rng(0)
    classes = real.tile(rng)[1]
    return {
        "atlas_tile_ms": per_call_ms(lambda: atlas.tile(rng), n),
        "real_tile_ms": per_call_ms(lambda: real.tile(rng), n),
        "atlas_section_ms": per_call_ms(lambda: atlas.section(rng), n),
        "targets_ms": per_call_ms(lambda: targets_from_classes(classes), n),
    }


def steps_per_s(source, classes: list[str], args, instances: bool) -> float:
    """Optimiser steps per second of the network alone on batches made beforehand."""
    card = ModelCard(
        "tiny_fpn",
        classes,
        [(0, 0, 0)] * len(classes),
        args.pixel_size,
        LUMINANCE,
        [0.7],
        [0.3],
        args.tile_size,
        64,
        semantic=True,
        input="luminance",
    )
    torch.manual_seed(0)
    model = build_model(card).train()
    model.instance_weight = 1.0 if instances else 0.0
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(1)
    make = targets_from_classes if instances else semantic_target
    batches = []
    for _ in range(args.steps + 3):
        tiles = [source.tile(rng) for _ in range(args.batch_size)]
        batches.append(([torch.from_numpy(im) for im, _ in tiles], [make(c) for _, c in tiles]))
    for batch in batches[:3]:
        train_step(model, optimiser, batch, 1e-3, torch.device("cpu"))
    start = time.perf_counter()
    for batch in batches[3:]:
        train_step(model, optimiser, batch, 1e-3, torch.device("cpu"))
    return round(args.steps / (time.perf_counter() - start), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--atlas", default=os.environ.get("SEBRE_ATLAS", str(DATA / "ccfv3")))
    parser.add_argument("--data", default=str(DATA / "glta"))
    parser.add_argument("--pixel-size", type=float, default=50.0)
    parser.add_argument("--tile-size", type=int, default=320)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--tiles", type=int, default=40)
    args = parser.parse_args()
    torch.set_num_threads(1)
    aug = Augmentation.luminance()
    shared_atlas(args.atlas)
    atlas = AtlasTiles(
        args.atlas, SectionRecipe(pixel_size_um=args.pixel_size), args.tile_size, aug, AtlasView("luminance")
    )
    found = shared_examples(args.data, args.pixel_size)
    real = TileSampler(model_view(found.examples, "luminance"), args.tile_size, np.ones(1, np.float32), aug)
    result = {
        "pixel_size": args.pixel_size,
        "tile_size": args.tile_size,
        "batch_size": args.batch_size,
        "cores": len(os.sched_getaffinity(0)),
        "threads": args.threads,
        **tile_costs(atlas, real, args.tiles),
    }
    mixed = MixedTiles(real, atlas, 0.7)
    tile_ms = 0.7 * result["atlas_tile_ms"] + 0.3 * result["real_tile_ms"]
    result["data_s_per_step_full"] = round(args.batch_size * (tile_ms + result["targets_ms"]) / 1e3, 3)
    result["data_s_per_step_semantic"] = round(args.batch_size * tile_ms / 1e3, 3)
    torch.set_num_threads(args.threads)
    result["steps_per_s_full"] = steps_per_s(mixed, found.table.names, args, instances=True)
    result["steps_per_s_semantic"] = steps_per_s(mixed, found.table.names, args, instances=False)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
