"""`sebre demo`: the whole path on built-in data, runnable on a laptop CPU in minutes.

A training slide and a different demo slide are synthesised, a light model is trained on the first
(cached, so the next run skips it), the second is segmented and exported, and the result is scored
against the demo slide's own truth layer.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .evaluate import compare_layers
from .model import read_card
from .segment import segment
from .slide import open_slide
from .synth import make_slide_store
from .train import train

DEMO_SLIDE = {"sections": 4, "size": (4096, 4096), "pixel_size": 4.0}
TRAIN_SEED, DEMO_SEED = 1, 2
ARCH, PIXEL_SIZE = "tiny_fpn", 16.0


def cache_dir() -> Path:
    """Where the demo model lives between runs: $SEBRE_CACHE, else the user's cache folder."""
    root = os.environ.get("SEBRE_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"), "sebre-ij")
    return Path(root)


def demo_model(steps: int, retrain: bool, work: Path) -> Path:
    """The cached demo model, trained first when missing (or asked to)."""
    path = cache_dir() / f"demo-{ARCH}-{PIXEL_SIZE:g}um-{steps}steps-seed{TRAIN_SEED}.safetensors"
    if path.exists() and not retrain:
        read_card(path)  # a damaged cache file is an error, not a silent retrain
        return path
    train_slide = work / "train.zarr"
    if train_slide.exists():
        shutil.rmtree(train_slide)
    make_slide_store(train_slide, seed=TRAIN_SEED, **DEMO_SLIDE)
    train([str(train_slide)], path, arch=ARCH, steps=steps, pixel_size=PIXEL_SIZE, seed=TRAIN_SEED)
    return path


def run_demo(out: str | Path = "sebre-demo", steps: int = 400, retrain: bool = False) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = demo_model(steps, retrain, out)
    slide = out / "demo.zarr"
    if slide.exists():
        shutil.rmtree(slide)
    make_slide_store(slide, seed=DEMO_SEED, **DEMO_SLIDE)
    result = segment(slide, model, labels="sebre", rois=out / "RoiSet.zip", geojson=out / "regions.geojson",
                     measurements=out / "measurements.csv", preview=out / "preview.png")
    card = read_card(model)
    dice = compare_layers(open_slide(slide), "sebre", "truth", card.classes, result.level)
    return {"model": str(model), "slide": str(slide), "regions": result.regions, "dice": dice,
            "dice_by_region": {r["name"]: dice.get(r["name"], float("nan")) for r in result.regions},
            "outputs": {"labels": f"{slide}/labels/sebre", "model": str(model), **result.outputs}, "seconds": result.seconds}
