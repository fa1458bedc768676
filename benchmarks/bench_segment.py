"""How `sebre segment` spends its time and memory, printed as one JSON object.

    python benchmarks/bench_segment.py [--quick] [--arch tiny_fpn] [--repeats 2]

Three slides hold the same synthetic tissue (2 sections with --quick, 8 without): `small`, and
`100x`, whose area is 100 times larger (10 x 10), the rest glass that is never written to disk
(zarr's fill value), as on a real scanner's sparse store. Each runs in its own process, so peak
RSS is that run's alone:

- `segment` on the slide with a random-weight light model (wall time, tiles run, peak RSS), then
  in the same process the model alone on the same tiles already in memory, with the same batch
  size: `overhead_ratio` = segment / model-only (1.0 would mean reading, tissue finding,
  stitching, pyramid and metadata cost nothing). On the CPU `segment` has the model leave its
  masks in their boxes (model.detect without pasting) and resizes them itself; the model alone
  asked the same way gives `overhead_ratio_boxed`, the cost of everything but the network;
- `naive` on the small slide: the whole inference level read into memory and every tile of the
  grid run, glass included, then stitched in memory: `naive_time_ratio` = naive / ours.

`rss_ratio_100x` and `time_ratio_100x` compare the 100x slide with the small one. Compare ratios
within one run: these machines are noisy (the model alone on the same tiles varied by 10 % from
minute to minute here), so `segment` and the model alone are run in turns (`--repeats`, 2 by
default) and the fastest run of each is compared; every run's time is in the JSON too.

Both run with glibc keeping freed blocks in the heap (allocator.kept_heap), as `sebre segment`
does; `--plain-heap` runs both without it, to see what it is worth.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sebre_ij.allocator import kept_heap
from sebre_ij.checkpoint import load_checkpoint, save_checkpoint
from sebre_ij.infer import best_classes, class_evidence, read_tile
from sebre_ij.model import ModelCard, detect, random_model
from sebre_ij.segment import SegmentOptions, segment
from sebre_ij.slide import inference_level, open_slide
from sebre_ij.stores import write_sparse_slide
from sebre_ij.synth import CLASSES, synth_slide
from sebre_ij.tiles import tile_grid
from sebre_ij.tissue import find_tissue, to_unit

SIZES = {"quick": (3072, 4096), "full": (6144, 8192)}  # level-0 pixels of the small slide
# sections on it (8 x 6 mm each): the full slide is filled as a scanner's slide of a brain series is,
# so its tissue (and the model's time) grows with the slide while the fixed costs stay
SECTIONS = {"quick": 2, "full": 8}
PIXEL_SIZE, MODEL_PIXEL_SIZE = 4.0, 8.0
TILE, OVERLAP, BATCH = 256, 64, 4


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def make_inputs(work: Path, quick: bool, arch: str) -> None:
    mode = "quick" if quick else "full"
    image, _ = synth_slide(SECTIONS[mode], SIZES[mode], PIXEL_SIZE, seed=7)
    pixel_size = {"pixel_size": PIXEL_SIZE, "min_pixel_size": MODEL_PIXEL_SIZE}
    write_sparse_slide(work / "small.zarr", image, 1, **pixel_size)
    write_sparse_slide(work / "100x.zarr", image, 10, **pixel_size)
    names = [n for n, _ in CLASSES]
    card = ModelCard(
        arch, names, [c for _, c in CLASSES], MODEL_PIXEL_SIZE, list("RGB"), [0.8] * 3, [0.2] * 3, TILE, OVERLAP
    )
    save_checkpoint(work / "model.safetensors", random_model(card), card)  # finds regions: labels are written


def tissue_tiles(slide_path: Path, card: ModelCard):
    """The tiles `segment` runs, read into memory, and the level's full grid size."""
    slide = open_slide(slide_path)
    level, factor = inference_level(slide, card.pixel_size_um)
    assert factor == 1.0, "the slides have a level at the model's µm/px"
    (tissue,) = find_tissue(slide)
    shape = slide.yx_shape(level)
    tiles = tile_grid(shape, card.tile_size, card.overlap, tissue.sections)
    images = [torch.from_numpy(read_tile(slide.array(level), slide.axes, t, 0, tissue.glass)) for t in tiles]
    return images, len(tile_grid(shape, card.tile_size, card.overlap))


def heap(plain: bool):
    """The allocator as `sebre segment` runs: freed blocks kept (allocator.kept_heap), unless `plain`."""
    return contextlib.nullcontext() if plain else kept_heap()


def model_only(model, images: list[torch.Tensor], plain_heap: bool, boxed: bool = False) -> float:
    """The model's calls alone, with the allocator as segment runs them. `boxed`: its masks left in
    their boxes (model.detect without pasting), as segment asks for on the CPU."""
    start = time.perf_counter()
    with heap(plain_heap), torch.inference_mode():
        for i in range(0, len(images), BATCH):
            detect(model, images[i : i + BATCH], paste_masks=not boxed)
    return time.perf_counter() - start


def warm_up(work: Path) -> None:
    """One untimed model call, so that neither measurement pays for torch's first-call setup."""
    model, card = load_checkpoint(work / "model.safetensors", "cpu")
    with torch.inference_mode():
        model([torch.rand(len(card.channels), card.tile_size, card.tile_size) for _ in range(BATCH)])


def run_segment(work: Path, slide: Path, repeat: int, plain_heap: bool):
    start = time.perf_counter()
    options = SegmentOptions(labels=f"bench{repeat}", batch_size=BATCH, progress=False, device="cpu")
    with heap(plain_heap):
        result = segment(slide, work / "model.safetensors", options)
    return result, time.perf_counter() - start


def run_ours(work: Path, name: str, repeats: int, plain_heap: bool) -> dict:
    """`segment` and the model alone, taken in turns `repeats` times each (each run's layer a new
    one), so that the machine's drift touches both alike; the fastest of each is reported."""
    slide = work / f"{name}.zarr"
    warm_up(work)
    result, seconds = run_segment(work, slide, 0, plain_heap)
    rss = peak_rss_mb()  # before the model-only pass holds every tile in memory
    model, card = load_checkpoint(work / "model.safetensors", "cpu")
    images, grid_tiles = tissue_tiles(slide, card)
    assert len(images) == result.tiles
    segment_runs, model_runs, boxed_runs = (
        [seconds],
        [model_only(model, images, plain_heap)],
        [model_only(model, images, plain_heap, True)],
    )
    for repeat in range(1, repeats):
        segment_runs.append(run_segment(work, slide, repeat, plain_heap)[1])
        model_runs.append(model_only(model, images, plain_heap))
        boxed_runs.append(model_only(model, images, plain_heap, boxed=True))
    return {
        "segment_s": round(min(segment_runs), 2),
        "model_only_s": round(min(model_runs), 2),
        "model_boxed_s": round(min(boxed_runs), 2),
        "segment_runs_s": [round(s, 2) for s in segment_runs],
        "model_only_runs_s": [round(s, 2) for s in model_runs],
        "model_boxed_runs_s": [round(s, 2) for s in boxed_runs],
        "tiles": result.tiles,
        "grid_tiles": grid_tiles,
        "tissue_fraction": round(result.tiles / grid_tiles, 4),
        "sections": result.sections,
        "peak_rss_mb": round(rss, 1),
    }


def run_naive(work: Path, name: str) -> dict:
    """Whole level in memory, every tile of the grid run, labels stitched in memory."""
    start = time.perf_counter()
    slide = open_slide(work / f"{name}.zarr")
    model, card = load_checkpoint(work / "model.safetensors", "cpu")
    level, _ = inference_level(slide, card.pixel_size_um)
    image, glass = to_unit(slide.plane(level)), np.ones(len(slide.channels), np.float32)
    labels = np.zeros(image.shape[1:], np.uint8)
    tiles = tile_grid(labels.shape, card.tile_size, card.overlap)
    with torch.inference_mode():
        for i in range(0, len(tiles), BATCH):
            batch = tiles[i : i + BATCH]
            # a tile may start before the level
            crops = [torch.from_numpy(read_tile(image, "cyx", t, 0, glass)) for t in batch]
            for t, out in zip(batch, model(crops)):
                classes, _ = best_classes(class_evidence(out, len(card.classes), 0.3))
                ys, xs = t.core
                labels[ys, xs] = classes[ys.start - t.y : ys.stop - t.y, xs.start - t.x : xs.stop - t.x]
    return {
        "naive_s": round(time.perf_counter() - start, 2),
        "naive_tiles": len(tiles),
        "naive_peak_rss_mb": round(peak_rss_mb(), 1),
    }


def child(work: Path, kind: str, name: str, repeats: int, plain_heap: bool) -> dict:
    proc = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            kind,
            "--slide",
            name,
            "--work",
            str(work),
            "--repeats",
            str(repeats),
            *(["--plain-heap"] if plain_heap else []),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"benchmark child {kind} {name} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller slides: under 3 minutes on 2 cores")
    parser.add_argument("--arch", default="tiny_fpn", help="random-weight model: tiny_fpn or mobilenet_v3_fpn")
    parser.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="runs of `segment` and of the model alone on each slide (the fastest counts)",
    )
    parser.add_argument(
        "--plain-heap", action="store_true", help="glibc's usual allocator for both (not allocator.kept_heap)"
    )
    parser.add_argument("--child", choices=["make", "ours", "naive"], help=argparse.SUPPRESS)
    parser.add_argument("--slide", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    if args.child == "make":
        make_inputs(Path(args.work), args.slide == "quick", args.arch)
        return
    if args.child:
        work = Path(args.work)
        print(
            json.dumps(
                run_ours(work, args.slide, args.repeats, args.plain_heap)
                if args.child == "ours"
                else run_naive(work, args.slide)
            )
        )
        return
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-segment-") as tmp:
        work = Path(tmp)
        # in a child too: a child's peak RSS starts from its parent's (getrusage keeps it across exec)
        subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                "make",
                "--slide",
                "quick" if args.quick else "full",
                "--arch",
                args.arch,
                "--work",
                str(work),
            ],
            check=True,
        )
        small = child(work, "ours", "small", args.repeats, args.plain_heap)
        big = child(work, "ours", "100x", args.repeats, args.plain_heap)
        naive = child(work, "naive", "small", 1, args.plain_heap)
    report = {
        "mode": "quick" if args.quick else "full",
        "arch": args.arch,
        "batch_size": BATCH,
        "tile": TILE,
        "repeats": args.repeats,
        "kept_heap": not args.plain_heap,
        "torch_threads": torch.get_num_threads(),
        "small": small,
        "100x": big,
        "naive_small": naive,
        "overhead_ratio": round(small["segment_s"] / small["model_only_s"], 3),
        "overhead_ratio_boxed": round(small["segment_s"] / small["model_boxed_s"], 3),
        "overhead_ratio_100x": round(big["segment_s"] / big["model_only_s"], 3),
        "rss_ratio_100x": round(big["peak_rss_mb"] / small["peak_rss_mb"], 3),
        "time_ratio_100x": round(big["segment_s"] / small["segment_s"], 3),
        "naive_time_ratio": round(naive["naive_s"] / small["segment_s"], 3),
        "bench_seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
