"""How `sebre segment` scales on Dask distributed, printed as one JSON object.

    python benchmarks/bench_scale.py [--quick] [--arch tiny_fpn]

One synthetic slide and one random-weight light model (random_model: it finds regions, so labels
are written), segmented three ways into separate label layers:

- in this process (torch's default threads: all cores);
- on a LocalCluster of 1 worker process, then of 2, each worker running one task at a time with one
  torch thread (ClusterOptions.threads=1; by default a lone worker would take every core), through a
  `--scheduler`-style connection to the already started cluster, so the times are the work's, not the cluster's start
  (reported apart as `cluster_start_s`).

`speedup_2_workers` = time with 1 worker / time with 2. Each run's labels are checked equal to the
in-process run's. Compare ratios within one run: these machines are noisy.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
from pathlib import Path

import torch
from distributed import LocalCluster

from sebre_ij.checkpoint import save_checkpoint
from sebre_ij.cluster import ClusterOptions
from sebre_ij.model import ModelCard, random_model
from sebre_ij.segment import SegmentOptions, segment
from sebre_ij.stores import write_sparse_slide
from sebre_ij.synth import CLASSES, synth_slide

SIZES = {"quick": (3072, 4096), "full": (6144, 8192)}  # level-0 pixels
PIXEL_SIZE, TILE, OVERLAP, BATCH = 4.0, 256, 64, 4


def make_inputs(work: Path, quick: bool, arch: str) -> None:
    image, _ = synth_slide(2, SIZES["quick" if quick else "full"], PIXEL_SIZE, seed=11)
    write_sparse_slide(work / "slide.zarr", image, 1, pixel_size=PIXEL_SIZE, min_pixel_size=4 * PIXEL_SIZE)
    names = [n for n, _ in CLASSES]
    card = ModelCard(arch, names, [c for _, c in CLASSES], PIXEL_SIZE, list("RGB"), [0.8] * 3, [0.2] * 3, TILE, OVERLAP)
    save_checkpoint(work / "model.safetensors", random_model(card), card)


def label_hash(store: Path, name: str) -> str:
    """One hash over every chunk file of a label layer (its metadata left out)."""
    digest = hashlib.sha256()
    root = store / "labels" / name
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.name.startswith((".z", "zarr.json")):
            digest.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return digest.hexdigest()


def timed_segment(work: Path, name: str, cluster: ClusterOptions = ClusterOptions()) -> tuple[float, int]:
    start = time.perf_counter()
    options = SegmentOptions(labels=name, batch_size=BATCH, progress=False, device="cpu")
    result = segment(work / "slide.zarr", work / "model.safetensors", options, cluster=cluster)
    return time.perf_counter() - start, result.tiles


def on_cluster(work: Path, workers: int) -> dict:
    start = time.perf_counter()
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        started = time.perf_counter() - start
        seconds, tiles = timed_segment(
            work, f"w{workers}", ClusterOptions(scheduler=cluster.scheduler_address, threads=1)
        )
    return {
        "segment_s": round(seconds, 2),
        "cluster_start_s": round(started, 2),
        "tiles": tiles,
        "same_labels": label_hash(work / "slide.zarr", f"w{workers}") == label_hash(work / "slide.zarr", "local"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller slide: under 3 minutes on 2 cores")
    parser.add_argument("--arch", default="tiny_fpn", help="random-weight model: tiny_fpn or mobilenet_v3_fpn")
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        work = Path(tmp)
        make_inputs(work, args.quick, args.arch)
        segment(
            work / "slide.zarr",
            work / "model.safetensors",
            SegmentOptions(labels="warm", batch_size=BATCH, progress=False, device="cpu"),
        )
        local_s, tiles = timed_segment(work, "local")
        one, two = on_cluster(work, 1), on_cluster(work, 2)
    report = {
        "mode": "quick" if args.quick else "full",
        "arch": args.arch,
        "tile": TILE,
        "batch_size": BATCH,
        "tiles": tiles,
        "in_process": {"segment_s": round(local_s, 2), "torch_threads": torch.get_num_threads()},
        "workers_1": one,
        "workers_2": two,
        "speedup_2_workers": round(one["segment_s"] / two["segment_s"], 3),
        "two_workers_over_in_process": round(local_s / two["segment_s"], 3),
        "bench_seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
