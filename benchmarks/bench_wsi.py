"""`sebre segment` on slides of real geometry: what level 0 at scanner resolution costs, as one JSON object.

    python benchmarks/bench_wsi.py [--chunk 512] [--repeats 1] [--model PATH]

A 75 x 25 mm slide holding 8 synthetic mouse-sized sections (tissue about 10 x 6 mm each), written
twice as a scanner writes it (NGFF 0.4, levels halving down to 1024 px, `stores.write_scan`):
level 0 at 0.5 µm/px (150,000 x 50,000 px, 9 levels) and at 0.25 µm/px (300,000 x 100,000 px, 10
levels). The image's pixels exist from 8 µm/px up; the finer levels hold only zarr's fill value,
since `segment` never reads them, but the label layer is written at every level. The model is a
random-weight light model with a semantic branch (`tiny_fpn`, 256 px tiles, 64 px overlap) at
50 µm/px, so tiles are resampled from the 32 µm/px level, which is the layer's inference level.
The random weights' class maps are patchy, but not unrealistically so for outline length: the
JSON's `outline_mm` (cells of the inference level whose four pixels differ, times its pixel size)
is about 50 mm per section, what a mouse coronal section's dozen regions have. (The shipped mouse
model was not there yet when this was written; `--model PATH` runs another checkpoint instead.)

Each measured run is its own process (peak RSS by getrusage of that process):

- `segment` on the slide: wall time, peak RSS, seconds per pyramid level (`level_seconds`, the
  layer's own counters: thread seconds summed), level-0 label pixels written per second of level
  0's time (`level0_px_per_s`: chunk files written at level 0 x pixels per chunk);
- `outline_mm`: the length of the outlines the finer levels follow, at the inference level;
- the model alone on the same tiles already in memory (the semantic branch alone, as `segment` runs
  it), same batch size: `segment_over_model`;
- where the model's card asks for the atlas prior (the shipped mouse model), the prior alone on those
  tiles' class evidence (`prior_s`: each section's plane fit and the fuse, `AtlasPrior.apply`), and
  `segment_over_model_and_prior`: `segment` over all the inference the card asks for.

`ratio_025_over_05` is the 0.25 µm/px run's `segment` time over the 0.5 µm/px run's.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import zarr

from sebre_ij.allocator import kept_heap
from sebre_ij.checkpoint import load_checkpoint, save_checkpoint
from sebre_ij.infer import card_prior, class_evidence, tile_reader
from sebre_ij.model import ModelCard, detect, random_model
from sebre_ij.model_input import input_map
from sebre_ij.segment import SegmentOptions, segment
from sebre_ij.slide import inference_level, open_slide
from sebre_ij.stores import write_scan
from sebre_ij.synth import CLASSES, synth_slide
from sebre_ij.tiles import Grid, tile_grid
from sebre_ij.tissue import find_tissue

SLIDE_MM = (25.0, 75.0)  # height, width of the glass
IMAGE_UM = 8.0  # µm/px of the finest level holding the image's pixels
DRAWN_UM = 6.4  # sections drawn as if at this µm/px: synth's 8 x 6 mm boxes become 10 x 7.5 mm
LEVEL0_UM = {"05": 0.5, "025": 0.25}
MODEL_UM, TILE, OVERLAP, BATCH = 50.0, 256, 64, 4


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def make_inputs(work: Path, chunk: int, model: str | None = None) -> None:
    shape = tuple(round(mm * 1000 / IMAGE_UM) for mm in SLIDE_MM)
    image, _ = synth_slide(8, shape, DRAWN_UM, seed=7)
    for name, level0 in LEVEL0_UM.items():
        write_scan(work / f"{name}.zarr", image, IMAGE_UM, level0, chunk=chunk)
    names = [n for n, _ in CLASSES]
    card = ModelCard(
        "tiny_fpn",
        names,
        [c for _, c in CLASSES],
        MODEL_UM,
        list("RGB"),
        [0.8] * 3,
        [0.2] * 3,
        TILE,
        OVERLAP,
        semantic=True,
    )
    if model:
        shutil.copyfile(model, work / "model.safetensors")
    else:
        save_checkpoint(work / "model.safetensors", random_model(card), card)


def model_tiles(slide_path: Path, card: ModelCard) -> list[torch.Tensor]:
    """The tiles `segment` runs, read (and resampled) into memory."""
    slide = open_slide(slide_path)
    level, factor = inference_level(slide, card.pixel_size_um)
    (tissue,) = find_tissue(slide)
    grid = Grid(slide.yx_shape(level), factor)
    tiles = tile_grid(grid.shape, card.tile_size, card.overlap, tissue.sections)
    read = tile_reader(slide.array(level), slide.axes, 0, input_map(card.input, tissue.image, tissue.coarse), factor)
    return [torch.from_numpy(read(t)) for t in tiles]


def model_only(model, images: list[torch.Tensor]) -> tuple[float, list[dict]]:
    """The semantic branch alone on the tiles, in batches, as `segment` runs it in region mode:
    (seconds, the tiles' outputs)."""
    outputs = []
    start = time.perf_counter()
    with kept_heap(), torch.inference_mode():
        for i in range(0, len(images), BATCH):
            outputs += detect(model, images[i : i + BATCH], paste_masks=False, instances=False)
    return time.perf_counter() - start, outputs


def prior_only(card: ModelCard, outputs: list[dict]) -> float | None:
    """The card's atlas prior alone on the tiles' class evidence (None where the card asks for none)."""
    prior = card_prior(card)
    if prior is None:
        return None
    min_score = SegmentOptions().min_score  # as `segment` takes the evidence (a semantic map ignores it)
    evidence = [class_evidence(o, len(card.classes), min_score).numpy() for o in outputs]
    start = time.perf_counter()
    for e in evidence:
        prior.apply(e)
    return time.perf_counter() - start


def outline_mm(slide: Path, name: str, level: int) -> float:
    """Outline length at the inference level: cells between four pixels not all of one label, times the pixel size."""
    opened = open_slide(slide)
    values = np.asarray(zarr.open_array(slide / "labels" / name / opened.levels[level].path, mode="r")[:])
    values = values.reshape(values.shape[-2:])
    corners = values[:-1, :-1], values[:-1, 1:], values[1:, :-1], values[1:, 1:]
    mixed = (corners[0] != corners[1]) | (corners[0] != corners[2]) | (corners[0] != corners[3])
    return float(mixed.sum()) * opened.pixel_size(level) / 1000


def level0_files(slide: Path, name: str) -> int:
    folder = slide / "labels" / name / "0"
    return sum(1 for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def run_child(work: Path, name: str, repeats: int) -> dict:
    slide = work / f"{name}.zarr"
    model, card = load_checkpoint(work / "model.safetensors", "cpu")
    with torch.inference_mode():  # torch's first-call setup, untimed
        detect(
            model,
            [torch.rand(len(card.channels), card.tile_size, card.tile_size) for _ in range(BATCH)],
            instances=False,
        )
    runs, result = [], None
    for repeat in range(repeats):
        start = time.perf_counter()
        options = SegmentOptions(labels=f"bench{repeat}", batch_size=BATCH, progress=False, device="cpu")
        with kept_heap():
            result = segment(slide, work / "model.safetensors", options)
        runs.append(time.perf_counter() - start)
    rss = peak_rss_mb()  # before the model-only pass holds every tile in memory
    images = model_tiles(slide, card)
    assert len(images) == result.tiles
    passes = [model_only(model, images) for _ in range(repeats)]
    model_s = min(seconds for seconds, _ in passes)
    prior_s = prior_only(card, passes[-1][1])
    chunk = open_slide(slide).levels[0].chunks[-1]
    files = level0_files(slide, f"bench{repeats - 1}")
    level0_s = result.level_seconds.get("0", 0.0)
    return {
        "segment_s": round(min(runs), 2),
        "segment_runs_s": [round(s, 2) for s in runs],
        "model_only_s": round(model_s, 2),
        "segment_over_model": round(min(runs) / model_s, 2),
        "prior_s": None if prior_s is None else round(prior_s, 2),
        "segment_over_model_and_prior": None if prior_s is None else round(min(runs) / (model_s + prior_s), 2),
        "peak_rss_mb": round(rss, 1),
        "tiles": result.tiles,
        "sections": result.sections,
        "inference_level": result.level,
        "level_seconds": {k: round(v, 2) for k, v in result.level_seconds.items()},
        "outline_mm": round(outline_mm(slide, f"bench{repeats - 1}", result.level), 1),
        "level0_chunk_files": files,
        "level0_px_per_s": round(files * chunk * chunk / level0_s) if level0_s else None,
    }


def child(work: Path, kind: str, name: str, args) -> dict:
    command = [sys.executable, __file__, "--child", kind, "--slide", name, "--work", str(work)]
    command += ["--chunk", str(args.chunk), "--repeats", str(args.repeats)] + (
        ["--model", args.model] if args.model else []
    )
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark child {kind} {name} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1]) if kind == "ours" else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunk", type=int, default=512, help="chunk side of every level (image and labels)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of `segment` per slide (the fastest counts)")
    parser.add_argument("--model", help="a checkpoint to run instead of the random-weight tiny_fpn")
    parser.add_argument("--child", choices=["make", "ours"], help=argparse.SUPPRESS)
    parser.add_argument("--slide", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "make":
        make_inputs(Path(args.work), args.chunk, args.model)
        return
    if args.child:
        print(json.dumps(run_child(Path(args.work), args.slide, args.repeats)))
        return
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-wsi-") as tmp:
        work = Path(tmp)
        child(work, "make", "", args)  # in a child too: a child's peak RSS starts from its parent's
        runs = {name: child(work, "ours", name, args) for name in LEVEL0_UM}
    report = {
        "chunk": args.chunk,
        "model": args.model or "random-weight tiny_fpn",
        "model_um_per_px": MODEL_UM if not args.model else load_checkpoint(args.model, "cpu")[1].pixel_size_um,
        "torch_threads": torch.get_num_threads(),
        "level0_05um": runs["05"],
        "level0_025um": runs["025"],
        "ratio_025_over_05": round(runs["025"]["segment_s"] / runs["05"]["segment_s"], 3),
        "bench_seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
