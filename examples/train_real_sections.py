"""Train on real brain sections, then score the model on sections it never saw, as is and rotated.

    python examples/train_real_sections.py --data ../shared/data/glta --out sebre-runs/glta
    python examples/train_real_sections.py --recipe mouse ...      # half the tiles from the atlas: the shipped model
    python examples/train_real_sections.py --recipe atlas-only ... # atlas sections alone; GLTa validates
    python examples/train_real_sections.py --recipe gpu ...        # ResNet-50-FPN on a CUDA GPU
    python examples/train_real_sections.py --model M.safetensors   # score a trained model only

The GLTa set (23 brightfield DAB coronal sections with registration-derived labels) is split by
section: TEST sections are left out of training altogether, VAL sections pick the best checkpoint,
the rest train. The atlas-only recipe trains on none of them, so every section but TEST validates:
two sections pick a checkpoint by a coin toss between plane fits, eighteen do not. TEST covers the
six reported regions (thalamus is in 9 sections, midbrain in 10).

Each test section is then segmented as `sebre segment` would (infer.predict_image) unrotated and
rotated by 90 and 45 degrees about its centre: image and truth get the same transform (45 degrees on
a larger canvas whose corners take the glass colour; only the rotated section's frame is scored),
the prediction is brought back to the section's own pixels, and `sebre evaluate`'s code scores it.
`--fluorescence` scores each test section a second time as a one-channel fluorescence picture
(the RGB mean inverted: bright tissue on dark glass), for a model that reads any modality
(`input` "luminance"). `--hemisections` scores each half of each test section (cut at its labelled
box's middle column, the other half glass), with and without the atlas prior.

Beside the model, a baseline that needs none: each test section given the labels of the training
section nearest in anteroposterior position (the atlas plane its anchoring names), stretched onto the
test section's tissue box (`nearest_section`). The atlas recipes read the atlas from `--atlas`
(default: $SEBRE_ATLAS, else ../shared/data/ccfv3 beside the repository), as does the baseline.

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
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sebre_ij.atlas import ATLAS_ENV
from sebre_ij.augment import affine_matrix, warp
from sebre_ij.checkpoint import load_checkpoint
from sebre_ij.datasets import Example, TrainingData, resample, shared_examples
from sebre_ij.evaluate import evaluate
from sebre_ij.infer import predict_image
from sebre_ij.model import pick_device
from sebre_ij.sampling import half_section, labelled_extent
from sebre_ij.tiles import resample_nearest
from sebre_ij.tissue import find_sections, glass_colour
from sebre_ij.train import TrainOptions, train

TEST = ["glta_s049", "glta_s079", "glta_s104", "glta_s124", "glta_s154"]
VAL = ["glta_s094", "glta_s119"]
REGIONS = ["cortex", "hippocampus", "striatum_pallidum", "thalamus", "hypothalamus", "midbrain"]
ANGLES = [0, 90, 45]
# 2 CPU cores: the light GroupNorm backbone (mobilenet_v3_fpn's 256-channel mask head is far costlier
# on CPU) at 50 µm/px, where a whole section (at most 243 px across its diagonal) fits one 320 px tile
# at any angle and is learnt whole
CPU = {"arch": "tiny_fpn", "pixel_size": 50.0, "tile_size": 320, "overlap": 64, "batch_size": 4, "lr": 1e-3}
# the CPU network with one luminance channel in (any stain or modality), a share of the tiles cut from
# the Allen atlas, the semantic branch trained alone (a step half as costly, better regions), a moving
# average of the weights kept (steadier than the last step's), hemisections among the real sections'
# tiles as among the atlas's (15 %), and its maps weighed against the atlas cut at each section's
# plane (atlas_prior.py)
ATLAS = {
    **CPU,
    "steps": 6000,
    "val_every": 500,
    "input": "luminance",
    "instance_loss": 0.0,
    "ema": 0.998,
    "hemisections": 0.15,
    "atlas_prior": 1.0,
}
RECIPES = {
    "cpu": {**CPU, "steps": 1500, "val_every": 200},
    # the shipped model (sebre_ij/models/mouse.safetensors, `make model`): half the tiles cut from the
    # atlas, half from the real training sections (a quarter from the atlas scored a little higher on
    # GLTa's test sections and far lower on atlas-cut sections and the Allen template: README)
    "mouse": {**ATLAS, "atlas_fraction": 0.5},
    # atlas sections alone: the real training sections are not used, GLTa only validates
    "atlas-only": {**ATLAS, "atlas_fraction": 1.0},
    # one CUDA GPU: SeBRe's ResNet-50-FPN at the sections' own pixel size
    "gpu": {
        "arch": "resnet50_fpn",
        "pixel_size": 12.5,
        "tile_size": 512,
        "overlap": 128,
        "batch_size": 8,
        "steps": 6000,
        "lr": 5e-4,
        "val_every": 500,
        "workers": 8,
    },
}


def rotated(
    image: np.ndarray, labels: np.ndarray, angle: float, fill: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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


def fluorescence(image: np.ndarray) -> np.ndarray:
    """A brightfield (C, H, W) picture as a one-channel fluorescence one: its grey level inverted,
    bright tissue on dark glass."""
    return 1.0 - image.mean(axis=0, keepdims=True)


def picture(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 of a (C, H, W) image in [0, 1], one channel shown grey."""
    rgb = np.repeat(image, 3, axis=0) if image.shape[0] == 1 else image
    return (np.moveaxis(rgb, 0, -1) * 255).round().astype(np.uint8)


def region_dice(folder: Path, data: Path) -> dict:
    """Dice of the six regions (and their mean) of folder/pred against folder/labels, by `sebre evaluate`'s code."""
    report = evaluate(str(folder / "pred"), str(folder / "labels"), folder / "report", classes=data / "sections.json")
    dice = {r["region"]: r["dice"] for r in report["regions"] if r["truth_px"]}
    return {
        **{r: dice.get(r) for r in REGIONS},
        "mean": round(float(np.mean([dice.get(r) or 0.0 for r in REGIONS])), 4),
        "mean_all_classes": report["mean_dice"],
    }


def shown_sections(sections: list[Example], look: str) -> list[Example]:
    """The test sections as `look` shows them: "rgb" as they are, "fluorescence" as `fluorescence`
    makes them, "hemisection" each half of each, cut at its labelled box's middle column
    (sampling.half_section), the other half glass."""
    if look == "fluorescence":
        return [replace(ex, image=fluorescence(ex.image)) for ex in sections]
    if look != "hemisection":
        return sections
    halves = []
    for ex in sections:
        _, middle, _ = labelled_extent(ex.classes)
        glass = glass_colour(ex.image, find_sections(ex.image))
        for side in ("left", "right"):
            image, labels = half_section(ex.image, ex.classes, glass, middle, left=side == "left")
            halves.append(replace(ex, image=image, classes=labels, name=f"{ex.name}_{side}"))
    return halves


def score(model_path: Path, data: Path, out: Path, tta: bool, look: str = "rgb", atlas_prior: bool = True) -> dict:
    """Per-region Dice of the model on the TEST sections at every angle in ANGLES, each shown as
    `look` says (shown_sections); without `atlas_prior`, the model's maps alone where its card asks
    for the atlas prior."""
    device = pick_device()
    model, card = load_checkpoint(model_path, device)
    sections = shown_sections([e for e in shared_examples(data).examples if e.name in TEST], look)
    results = {}
    for angle in ANGLES:
        folder = out / ((f"rot{angle}" if look == "rgb" else f"{look}{angle}") + ("" if atlas_prior else "_no_prior"))
        for ex in sections:
            fill = glass_colour(ex.image, find_sections(ex.image))
            image, truth, frame = rotated(ex.image, ex.classes, angle, fill)
            small, _ = resample(image, truth, ex.pixel_size_um / card.pixel_size_um)
            if small.shape[0] != len(card.channels) and card.input == "channels":
                small = np.repeat(small.mean(axis=0, keepdims=True), len(card.channels), axis=0)
            pred = predict_image(model, card, small, device=device, flips=tta, atlas_prior=atlas_prior)
            pred = resample_nearest(pred, pred.shape, 0, truth.shape[0], 0, truth.shape[1], truth.shape)
            write_png(folder / "pred" / f"{ex.name}.png", np.where(frame, pred, 0).astype(np.uint8))
            write_png(folder / "labels" / f"{ex.name}.png", truth)
            write_png(folder / "images" / f"{ex.name}.png", picture(image))
        results[folder.name] = region_dice(folder, data)
    return results


def tissue_box(image: np.ndarray) -> tuple[slice, slice]:
    """The box of a section picture's tissue, as `segment` finds it."""
    ys, xs = np.nonzero(find_sections(image))
    return slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1)


def stretched_labels(source: Example, target: Example) -> np.ndarray:
    """`source`'s labels inside its tissue box, stretched (nearest) onto `target`'s tissue box."""
    (sy, sx), (ty, tx) = tissue_box(source.image), tissue_box(target.image)
    labels = source.classes[sy, sx]
    shape = (ty.stop - ty.start, tx.stop - tx.start)
    rows = np.minimum((np.arange(shape[0]) + 0.5) * labels.shape[0] / shape[0], labels.shape[0] - 1).astype(int)
    cols = np.minimum((np.arange(shape[1]) + 0.5) * labels.shape[1] / shape[1], labels.shape[1] - 1).astype(int)
    out = np.zeros(target.classes.shape, np.uint8)
    out[ty, tx] = labels[rows[:, None], cols[None, :]]
    return out


def nearest_section(data: Path, anchoring: Path, out: Path) -> dict:
    """Dice of the nearest-section baseline on the TEST sections: each gets the labels of the training
    section (neither TEST nor VAL) whose anchoring origin is nearest along the anteroposterior axis,
    stretched onto its tissue box. What a model must beat to have learnt more than the series' order."""
    planes = json.loads(anchoring.read_text())
    examples = shared_examples(data).examples
    training = [e for e in examples if e.name not in TEST + VAL]
    folder = out / "nearest_section"
    picked = {}
    for ex in (e for e in examples if e.name in TEST):
        ap = planes[ex.name]["anchoring"][1]
        near = min(training, key=lambda t: abs(planes[t.name]["anchoring"][1] - ap))
        picked[ex.name] = near.name
        write_png(folder / "pred" / f"{ex.name}.png", stretched_labels(near, ex))
        write_png(folder / "labels" / f"{ex.name}.png", ex.classes)
    return {**region_dice(folder, data), "nearest": picked}


def print_table(results: dict) -> None:
    print(f"{'':24s}" + "".join(f"{r[:12]:>13s}" for r in [*REGIONS, "mean"]))
    for name, row in results.items():
        print(
            f"{name:24s}"
            + "".join(f"{row[r] if row[r] is not None else float('nan'):13.3f}" for r in [*REGIONS, "mean"])
        )


def atlas_default(here: Path) -> Path:
    return Path(os.environ.get(ATLAS_ENV) or here.parent.parent / "shared/data/ccfv3")


def main() -> None:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data",
        type=Path,
        default=Path(os.environ.get("SEBRE_GLTA", here.parent.parent / "shared/data/glta")),
        help="the GLTa set folder (default: $SEBRE_GLTA, else ../shared/data/glta beside the repository)",
    )
    parser.add_argument(
        "--atlas",
        type=Path,
        default=atlas_default(here),
        help="the CCFv3 folder (default: $SEBRE_ATLAS, else ../shared/data/ccfv3 beside the repository)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("sebre-runs/glta"), help="folder for the model, curves and reports"
    )
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="cpu")
    parser.add_argument("--steps", type=int, help="override the recipe's optimiser steps")
    parser.add_argument("--workers", type=int, help="override the recipe's tile workers")
    parser.add_argument("--atlas-fraction", type=float, help="override the recipe's share of tiles cut from the atlas")
    parser.add_argument("--ema", type=float, help="override the recipe's decay of the weights' moving average (0: off)")
    parser.add_argument("--device", help="cpu, cuda (default: CUDA when present)")
    parser.add_argument("--init", type=Path, help="torchvision weights to start from (e.g. COCO Mask R-CNN .pth)")
    parser.add_argument("--model", type=Path, help="score this checkpoint instead of training one")
    parser.add_argument(
        "--fluorescence", action="store_true", help="also score the test sections as fluorescence pictures"
    )
    parser.add_argument(
        "--hemisections", action="store_true", help="also score each half of each test section, the other half glass"
    )
    parser.add_argument("--no-tta", dest="tta", action="store_false", help="score without mirrored test-time views")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads for torch (default 1: on a shared 2-core machine two threads wait on each other)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not (args.data / "sections.json").is_file():
        raise SystemExit(f"{args.data}: no sections.json; pass --data pointing at the GLTa set (shared/data/glta)")
    args.out.mkdir(parents=True, exist_ok=True)
    overrides = {
        k: v
        for k, v in (
            ("steps", args.steps),
            ("workers", args.workers),
            ("device", args.device),
            ("atlas_fraction", args.atlas_fraction),
            ("ema", args.ema),
        )
        if v is not None
    }
    recipe = {**RECIPES[args.recipe], **overrides}
    if "atlas_fraction" in recipe:
        recipe["atlas"] = str(args.atlas)
    model_path = args.model or args.out / f"{args.recipe}.safetensors"
    val = () if recipe.get("atlas_fraction") == 1.0 else tuple(VAL)  # () validates on all but TEST
    summary = {"recipe": args.recipe, "settings": recipe, "test_sections": TEST, "val_sections": val or "all but test"}
    if args.model is None:
        wall = time.perf_counter()
        options = TrainOptions(val_sections=val, test_sections=tuple(TEST), seed=args.seed, init=args.init, **recipe)
        card = train(TrainingData((str(args.data),)), model_path, options)
        summary["training"] = {
            "wall_s": round(time.perf_counter() - wall, 1),
            "loop_wall_s": card.training["seconds"],
            "loop_cpu_s": card.training["cpu_seconds"],
            "best_step": card.training.get("best_step"),
            "val_dice": card.training.get("val_dice"),
            "cores": os.cpu_count(),
            "threads": args.threads,
        }
    model, card = load_checkpoint(model_path)
    summary["model"] = {
        "file": str(model_path),
        "megabytes": round(model_path.stat().st_size / 1e6, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    wall = time.perf_counter()
    summary["dice"] = score(model_path, args.data, args.out, args.tta)
    if card.atlas_prior:
        summary["dice"].update(score(model_path, args.data, args.out, args.tta, atlas_prior=False))
    if args.fluorescence:
        summary["dice"].update(score(model_path, args.data, args.out, args.tta, look="fluorescence"))
    if args.hemisections:
        summary["dice"].update(score(model_path, args.data, args.out, args.tta, look="hemisection"))
        if card.atlas_prior:
            summary["dice"].update(score(model_path, args.data, args.out, args.tta, "hemisection", atlas_prior=False))
    summary["scoring_wall_s"] = round(time.perf_counter() - wall, 1)
    anchoring = args.atlas / "glta_anchoring.json"
    if anchoring.is_file():
        summary["nearest_section"] = nearest_section(args.data, anchoring, args.out)
    (args.out / "results.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k not in ("dice", "nearest_section")}, indent=1))
    rows = {
        **summary["dice"],
        **({"nearest_section": summary["nearest_section"]} if "nearest_section" in summary else {}),
    }
    print_table(rows)


if __name__ == "__main__":
    main()
