"""GPU throughput of `sebre segment`: does the model ever wait for the disk? One JSON object.

    python benchmarks/bench_gpu.py [--arch resnet50_fpn] [--tile 1024] [--batch-size auto] [--device cuda]

A synthetic slide with tissue under most tiles and a random-weight model that
finds regions (synth.random_model):

- `model_only_images_s`: the model alone on tiles already on the device, same batch size;
- `pipeline_images_s`: `segment` end to end (reading, class maps, writing, pyramid) per tile run;
- `gpu_busy_fraction`: the time the GPU spent in the model's calls during `segment` (CUDA events
  around each call), over `segment`'s wall time;
- `pipeline_over_model`: pipeline / model-only throughput (aim: 0.9 or more).

Runs on the CPU too (`--device cpu --arch tiny_fpn --tile 256`), to check the script itself.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sebre_ij import infer
from sebre_ij.checkpoint import load_checkpoint, save_checkpoint
from sebre_ij.infer import amp_dtype, auto_batch_size
from sebre_ij.model import ModelCard, random_model
from sebre_ij.segment import SegmentOptions, segment
from sebre_ij.stores import write_sparse_slide
from sebre_ij.synth import CLASSES


def make_inputs(work: Path, arch: str, tile: int, tiles_per_side: int) -> None:
    """A slide at the model's µm/px: a square of stained 'tissue' (noise over a tissue colour) on the
    middle two thirds of each side, glass around it (most of a slide is glass: brightfield)."""
    side = tile * tiles_per_side
    rng = np.random.default_rng(0)
    image = np.full((3, side, side), 245, np.uint8)
    inner = slice(side // 6, side - side // 6)
    image[:, inner, inner] = np.clip(
        rng.normal(150, 30, (3, inner.stop - inner.start, inner.stop - inner.start)), 0, 255
    )
    write_sparse_slide(work / "slide.zarr", image, 1, pixel_size=2.0, chunk=512, min_pixel_size=16.0)
    names = [n for n, _ in CLASSES]
    card = ModelCard(arch, names, [c for _, c in CLASSES], 2.0, list("RGB"), [0.6] * 3, [0.2] * 3, tile, tile // 8)
    save_checkpoint(work / "model.safetensors", random_model(card), card)


class GpuClock:
    """Wraps a function that runs the model: CUDA events give the device time of each call."""

    def __init__(self, run, device: torch.device):
        self.run, self.device, self.events = run, device, []

    def __call__(self, *args, **kwargs):
        if self.device.type != "cuda":
            start = time.perf_counter()
            out = self.run(*args, **kwargs)
            self.events.append(time.perf_counter() - start)
            return out
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        out = self.run(*args, **kwargs)
        end.record()
        self.events.append((begin, end))
        return out

    def busy_seconds(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            return sum(b.elapsed_time(e) for b, e in self.events) / 1000
        return sum(self.events)


def model_only(model, card: ModelCard, device: torch.device, batch: int, n_tiles: int) -> float:
    """Images per second of the model alone on tiles already on the device."""
    images = [torch.rand(len(card.channels), card.tile_size, card.tile_size, device=device) for _ in range(batch)]
    dtype = amp_dtype(device)
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        model(images)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(max(1, n_tiles // batch)):
            model(images)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return max(1, n_tiles // batch) * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet50_fpn")
    parser.add_argument("--tile", type=int, default=1024)
    parser.add_argument("--tiles-per-side", type=int, default=12)
    parser.add_argument("--batch-size", default="auto")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        work = Path(tmp)
        make_inputs(work, args.arch, args.tile, args.tiles_per_side)
        model, card = load_checkpoint(work / "model.safetensors", device)
        batch = auto_batch_size(model, card, device) if args.batch_size == "auto" else int(args.batch_size)
        clock = GpuClock(infer.run_model, device)
        infer.run_model = clock  # segment's own model calls, timed (predict_tiles looks the name up per batch)
        start = time.perf_counter()
        result = segment(
            work / "slide.zarr",
            work / "model.safetensors",
            SegmentOptions(labels="bench", batch_size=batch, progress=False, device=str(device)),
        )
        wall = time.perf_counter() - start
        infer.run_model = clock.run
        pipeline = result.tiles / wall
        alone = model_only(model, card, device, batch, result.tiles)
    print(
        json.dumps(
            {
                "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                "arch": args.arch,
                "tile": args.tile,
                "batch_size": batch,
                "precision": str(amp_dtype(device)),
                "tiles": result.tiles,
                "segment_s": round(wall, 2),
                "pipeline_images_s": round(pipeline, 2),
                "model_only_images_s": round(alone, 2),
                "pipeline_over_model": round(pipeline / alone, 3),
                "gpu_busy_fraction": round(clock.busy_seconds() / wall, 3),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
