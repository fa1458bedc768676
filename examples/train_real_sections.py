"""Train on real brain sections, then score the model on sections it never saw, as is and rotated.

    python examples/train_real_sections.py --data ../shared/data/glta --out sebre-runs/glta
    python examples/train_real_sections.py --recipe gpu ...        # ResNet-50-FPN on a CUDA GPU
    python examples/train_real_sections.py --model M.safetensors   # score a trained model only

The GLTa set (23 brightfield DAB coronal sections with registration-derived labels) is split by
section: TEST sections are left out of training altogether, VAL sections pick the best checkpoint,
the rest train. TEST covers the six reported regions (thalamus is in 9 sections, midbrain in 10).

Each test section is then segmented as `sebre segment` would (infer.predict_image) unrotated and
rotated by 90 and 45 degrees about its centre: image and truth get the same transform (45 degrees on
a larger canvas whose corners take the glass colour; only the rotated section's frame is scored),
the prediction is brought back to the section's own pixels, and `sebre evaluate`'s code scores it.
Printed and written to OUT/results.json: per-region Dice, the mean of the six regions, training
wall and CPU time, model size. OUT holds the checkpoint, its curves and evaluate's reports; keep it
outside the repository.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sebre_ij.augment import affine_matrix, warp
from sebre_ij.datasets import TrainingData, resample, shared_examples
from sebre_ij.evaluate import evaluate
from sebre_ij.infer import predict_image
from sebre_ij.model import load_checkpoint, pick_device
from sebre_ij.tiles import resample_nearest
from sebre_ij.tissue import find_sections, glass_colour
from sebre_ij.train import TrainOptions, train

TEST = ["glta_s049", "glta_s079", "glta_s104", "glta_s124", "glta_s154"]
VAL = ["glta_s094", "glta_s119"]
REGIONS = ["cortex", "hippocampus", "striatum_pallidum", "thalamus", "hypothalamus", "midbrain"]
ANGLES = [0, 90, 45]
RECIPES = {
    # 2 CPU cores, about 40 minutes (1.6 s a step, 2 threads): the light GroupNorm backbone (mobilenet_v3_fpn's 256-channel
    # mask head costs about 10x more per step on CPU) at 50 µm/px, where a whole section (at most
    # 243 px across its diagonal) fits one 320 px tile at any angle and is learnt whole
    "cpu": {"arch": "tiny_fpn", "pixel_size": 50.0, "tile_size": 320, "overlap": 64, "batch_size": 4,
            "steps": 1500, "lr": 1e-3, "val_every": 200},
    # one CUDA GPU: SeBRe's ResNet-50-FPN at the sections' own pixel size
    "gpu": {"arch": "resnet50_fpn", "pixel_size": 12.5, "tile_size": 512, "overlap": 128, "batch_size": 8,
            "steps": 6000, "lr": 5e-4, "val_every": 500, "workers": 8},
}


def rotated(image: np.ndarray, labels: np.ndarray, angle: float, fill: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image, labels and the section's frame (bool) rotated by `angle` degrees about the centre on
    a canvas that holds the whole rotated section."""
    h, w = labels.shape
    c, s = abs(math.cos(math.radians(angle))), abs(math.sin(math.radians(angle)))
    shape = (math.ceil(round(h * c + w * s, 6)), math.ceil(round(h * s + w * c, 6)))
    matrix, centre = affine_matrix(angle), ((h - 1) / 2, (w - 1) / 2)
    image_r, labels_r = warp(image, labels, matrix, centre, shape, fill)
    _, frame = warp(image[:1], np.ones_like(labels), matrix, centre, shape, fill[:1])
    return image_r, labels_r, frame > 0


def write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def score(model_path: Path, data: Path, out: Path, tta: bool) -> dict:
    """Per-region Dice of the model on the TEST sections at every angle in ANGLES."""
    device = pick_device()
    model, card = load_checkpoint(model_path, device)
    sections = [e for e in shared_examples(data).examples if e.name in TEST]
    results = {}
    for angle in ANGLES:
        folder = out / f"rot{angle}"
        for ex in sections:
            fill = glass_colour(ex.image, find_sections(ex.image))
            image, truth, frame = rotated(ex.image, ex.classes, angle, fill)
            small, _ = resample(image, truth, ex.pixel_size_um / card.pixel_size_um)
            pred = predict_image(model, card, small, device=device, flips=tta)
            pred = resample_nearest(pred, pred.shape, 0, truth.shape[0], 0, truth.shape[1], truth.shape)
            write_png(folder / "pred" / f"{ex.name}.png", np.where(frame, pred, 0).astype(np.uint8))
            write_png(folder / "labels" / f"{ex.name}.png", truth)
            write_png(folder / "images" / f"{ex.name}.png", (np.moveaxis(image, 0, -1) * 255).round().astype(np.uint8))
        report = evaluate(str(folder / "pred"), str(folder / "labels"), folder / "report", classes=data / "sections.json")
        dice = {r["region"]: r["dice"] for r in report["regions"] if r["truth_px"]}
        results[f"rot{angle}"] = {**{r: dice.get(r) for r in REGIONS},
                                  "mean": round(float(np.mean([dice.get(r) or 0.0 for r in REGIONS])), 4),
                                  "mean_all_classes": report["mean_dice"]}
    return results


def print_table(results: dict) -> None:
    print(f"{'':8s}" + "".join(f"{r[:12]:>13s}" for r in [*REGIONS, "mean"]))
    for angle, row in results.items():
        print(f"{angle:8s}" + "".join(f"{row[r] if row[r] is not None else float('nan'):13.3f}" for r in [*REGIONS, "mean"]))


def main() -> None:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("SEBRE_GLTA", here.parent.parent / "shared/data/glta")),
                        help="the GLTa set folder (default: $SEBRE_GLTA, else ../shared/data/glta beside the repository)")
    parser.add_argument("--out", type=Path, default=Path("sebre-runs/glta"), help="folder for the model, curves and reports")
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="cpu")
    parser.add_argument("--steps", type=int, help="override the recipe's optimiser steps")
    parser.add_argument("--init", type=Path, help="torchvision weights to start from (e.g. COCO Mask R-CNN .pth)")
    parser.add_argument("--model", type=Path, help="score this checkpoint instead of training one")
    parser.add_argument("--no-tta", dest="tta", action="store_false", help="score without mirrored test-time views")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for torch (default 1: on a shared 2-core machine two threads wait on each other)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not (args.data / "sections.json").is_file():
        raise SystemExit(f"{args.data}: no sections.json; pass --data pointing at the GLTa set (shared/data/glta)")
    args.out.mkdir(parents=True, exist_ok=True)
    recipe = {**RECIPES[args.recipe], **({"steps": args.steps} if args.steps else {})}
    model_path = args.model or args.out / f"{args.recipe}.safetensors"
    summary = {"recipe": args.recipe, "settings": recipe, "test_sections": TEST, "val_sections": VAL}
    if args.model is None:
        wall = time.perf_counter()
        options = TrainOptions(val_sections=tuple(VAL), test_sections=tuple(TEST), seed=args.seed, init=args.init, **recipe)
        card = train(TrainingData((str(args.data),)), model_path, options)
        summary["training"] = {"wall_s": round(time.perf_counter() - wall, 1), "loop_wall_s": card.training["seconds"],
                               "loop_cpu_s": card.training["cpu_seconds"], "best_step": card.training.get("best_step"),
                               "val_dice": card.training.get("val_dice"), "cores": os.cpu_count(), "threads": args.threads}
    model, _ = load_checkpoint(model_path)
    summary["model"] = {"file": str(model_path), "megabytes": round(model_path.stat().st_size / 1e6, 1),
                        "parameters": sum(p.numel() for p in model.parameters())}
    wall = time.perf_counter()
    summary["dice"] = score(model_path, args.data, args.out, args.tta)
    summary["scoring_wall_s"] = round(time.perf_counter() - wall, 1)
    (args.out / "results.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "dice"}, indent=1))
    print_table(summary["dice"])


if __name__ == "__main__":
    main()
