"""`sebre demo`: the whole path on built-in data, runnable on a laptop CPU in minutes.

A training slide and a different demo slide are synthesised, a light model is trained on the first
(cached, so the next run skips it), the second is segmented and exported, and the result is scored
against the demo slide's own truth layer.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .datasets import TrainingData
from .evaluate import compare_layers
from .exports import Exports
from .model import read_card
from .segment import SegmentOptions, segment
from .slide import open_slide
from .stores import make_slide_store
from .train import TrainOptions, train

DEMO_SLIDE = {"sections": 4, "size": (4096, 4096), "pixel_size": 4.0}
TRAIN_SLIDES = {"train-dab.zarr": (1, "dab"), "train-nissl.zarr": (3, "nissl")}  # seed, stain: both stains
DEMO_SEED = 2
# Whole sections fit a 128 px tile at 64 µm/px, so a few CPU minutes train a usable model.
MODEL = {"arch": "tiny_fpn", "pixel_size": 64.0, "tile_size": 128, "overlap": 48}
STEPS = 1000


def cache_dir() -> Path:
    """Where the demo model lives between runs: $SEBRE_CACHE, else the user's cache folder."""
    root = os.environ.get("SEBRE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"), "sebre-ij"
    )
    return Path(root)


def demo_model(steps: int, retrain: bool, work: Path) -> Path:
    """The cached demo model, trained first when missing (or asked to)."""
    path = cache_dir() / f"demo-{MODEL['arch']}-{MODEL['pixel_size']:g}um-{steps}steps-v2.safetensors"
    if path.exists() and not retrain:
        read_card(path)  # a damaged cache file is an error, not a silent retrain
        return path
    slides = [fresh_slide(work / name, seed, stain) for name, (seed, stain) in TRAIN_SLIDES.items()]
    train(TrainingData(tuple(slides)), path, TrainOptions(steps=steps, seed=0, **MODEL))
    return path


def fresh_slide(path: Path, seed: int, stain: str | None = None) -> str:
    """A demo store made anew (the demo owns its folder)."""
    if path.exists():
        shutil.rmtree(path)
    make_slide_store(path, seed=seed, stain=stain, **DEMO_SLIDE)
    return str(path)


def run_demo(out: str | Path = "sebre-demo", steps: int = STEPS, retrain: bool = False) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = demo_model(steps, retrain, out)
    slide = Path(fresh_slide(out / "demo.zarr", DEMO_SEED))
    exports = Exports(
        rois=out / "RoiSet.zip",
        geojson=out / "regions.geojson",
        measurements=out / "measurements.csv",
        preview=out / "preview.png",
    )
    result = segment(slide, model, SegmentOptions(labels="sebre", tta=True), exports)
    card = read_card(model)
    dice = compare_layers(open_slide(slide), "sebre", "truth", card.classes, result.level)
    return {
        "model": str(model),
        "slide": str(slide),
        "regions": result.regions,
        "dice": dice,
        "card": card,
        "level": result.level,
        "pixel_size_um": result.pixel_size_um,
        "tiles": result.tiles,
        "dice_by_region": {r["name"]: dice.get(r["name"], float("nan")) for r in result.regions},
        "outputs": {"labels": f"{slide}/labels/sebre", "model": str(model), **result.outputs},
        "seconds": result.seconds,
    }
