"""Peak memory of `sebre segment` by batch size and tile size, printed as one JSON object.

    python benchmarks/bench_memory.py [--quick]

A synthetic slide (4 sections, 8 µm/px level 0) and a random-weight light model (`tiny_fpn`, with
its semantic branch, at 16 µm/px) that finds regions; each run is `sebre segment` in a process of
its own, its peak RSS read by the kernel (getrusage of the finished child). The figures are what
the README's table gives and what tests/test_segment.py caps a run at (twice the peak).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sebre_ij.checkpoint import save_checkpoint
from sebre_ij.model import ModelCard, random_model
from sebre_ij.stores import make_slide_store
from sebre_ij.synth import CLASSES

TILES, BATCHES = (256, 512), (1, 4, 8)


def peak_rss_mb(cmd: list[str]) -> tuple[float, float]:
    """(peak RSS in MB, seconds) of a command run in a child whose only child is the command."""
    probe = (
        "import resource, subprocess, sys, time; t = time.perf_counter(); "
        "subprocess.run(sys.argv[1:], check=True, capture_output=True); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, time.perf_counter() - t)"
    )
    out = subprocess.run([sys.executable, "-c", probe, *cmd], capture_output=True, text=True, check=True).stdout.split()
    return round(float(out[0]), 1), round(float(out[1]), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiles of 256 only")
    args = parser.parse_args()
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        work = Path(tmp)
        names = [n for n, _ in CLASSES]
        card = ModelCard(
            "tiny_fpn", names, [c for _, c in CLASSES], 16.0, list("RGB"), [0.8] * 3, [0.2] * 3, 256, 64, semantic=True
        )
        save_checkpoint(work / "m.safetensors", random_model(card), card)
        make_slide_store(work / "slide.zarr", sections=4, size=(4096, 4096), pixel_size=8.0, seed=3)
        for tile in TILES[:1] if args.quick else TILES:
            for batch in BATCHES:
                name = f"t{tile}b{batch}"
                cmd = [
                    sys.executable,
                    "-m",
                    "sebre_ij.cli",
                    "segment",
                    str(work / "slide.zarr"),
                    "--model",
                    str(work / "m.safetensors"),
                    "--labels",
                    name,
                    "--tile-size",
                    str(tile),
                    "--overlap",
                    "64",
                    "--batch-size",
                    str(batch),
                    "--min-score",
                    "0",
                ]
                rss, seconds = peak_rss_mb(cmd)
                rows.append({"tile": tile, "batch_size": batch, "peak_rss_mb": rss, "seconds": seconds})
    print(
        json.dumps(
            {
                "runs": rows,
                "bench_seconds": round(time.perf_counter() - started, 1),
                "self_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
