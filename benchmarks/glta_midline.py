"""How far GLTa's labels sit from the tissue they label, along the left-right axis, as JSON.

    python benchmarks/glta_midline.py [--data ../shared/data/glta] [--model sebre_ij/models/mouse.safetensors]

GLTa's labels are the atlas cut along planes DeepSlice predicted, not traced on the tissue. A
coronal section is near mirror-symmetric about its midline, and so is the atlas cut: for each
section (at 50 µm/px, the shipped model's), this finds the column the picture is most symmetric
about (least squared difference of the grey picture and its mirror image over the tissue) and the
column the label image is (fewest pixels whose class differs from their mirror pixel's). `offset_um`
is the picture's axis less the labels' (positive: the labels sit left of the tissue's midline).
`dice_cost` is what the offset alone costs on the test sections: the mean Dice, over the six
reported regions pooled over the sections, of each test section's labels against the same labels
moved onto the tissue's midline. With `--model`, `model_dice` and `model_dice_moved` are the model's
on the test sections at 50 µm/px (mirrored views, its card's atlas prior), against the labels and
against the moved labels. `learnt_offset_mm` is how far along the atlas's left-right axis the fitted
planes must move for the model to score best on the training sections' labels (those neither TEST
nor VAL: the shipped model's; a grid of LEARN_STEP_MM), and `model_dice_learnt_offset` the model's on
the test sections with its planes moved that far: what copying the labels' offset, learnt from
the training labels alone, is worth.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi

from sebre_ij.atlas_prior import AtlasPrior
from sebre_ij.checkpoint import load_checkpoint
from sebre_ij.datasets import resample, shared_examples
from sebre_ij.infer import card_prior, predict_image
from sebre_ij.metrics import confusion, dice_iou
from sebre_ij.tissue import find_sections

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "examples"))
from train_real_sections import REGIONS, TEST, VAL  # noqa: E402

PIXEL_UM = 50.0
LEARN_STEP_MM = 0.025
LEARN_GRID = np.arange(-20, 21) * LEARN_STEP_MM
FITS: dict[bytes, tuple | None] = {}  # a tile's probabilities -> its section's fit, shared by every move


@dataclass(frozen=True)
class MovedPrior(AtlasPrior):
    """An atlas prior whose fitted planes are moved `lr_mm` along the atlas's left-right axis."""

    lr_mm: float = 0.0

    def locate(self, probabilities: np.ndarray) -> tuple | None:
        key = hashlib.blake2b(probabilities.tobytes(), digest_size=16).digest()
        if key not in FITS:
            FITS[key] = super().locate(probabilities)
        found = FITS[key]
        return None if found is None else (found[0]._replace(lr=found[0].lr + self.lr_mm), *found[1:])


def mirror_axis(values: np.ndarray, mask: np.ndarray, differ) -> float:
    """The column (0.25 px steps) about which `values` on `mask` best match their mirror image."""
    h, w = values.shape
    ys, xs = np.nonzero(mask)
    best = (np.inf, 0.0)
    for axis in np.arange(0.35 * w, 0.65 * w, 0.25):
        mirrored = 2 * axis - xs
        inside = (mirrored >= 0) & (mirrored <= w - 1)
        seen = ndi.map_coordinates(values, [ys[inside], mirrored[inside]], order=0 if differ else 1)
        cost = (
            np.mean(values[ys[inside], xs[inside]] != seen) if differ else np.mean((values[ys, xs][inside] - seen) ** 2)
        )
        best = min(best, (float(cost), float(axis)))
    return best[1]


def pooled_dice(pairs: list[tuple[np.ndarray, np.ndarray]], classes: list[int]) -> float:
    """Mean over `classes` of the Dice of (prediction, truth) pairs pooled over the pairs."""
    n = max(int(max(a.max(), b.max())) for a, b in pairs) + 1
    dice, _ = dice_iou(sum(confusion(a, b, n) for a, b in pairs))
    return float(np.mean(dice[classes]))


def moved_dice(model, card, lr_mm: float, sections: list, classes: list[int]) -> float:
    """`pooled_dice` of the model on (image, labels) `sections` with its fitted planes moved `lr_mm`."""
    prior = card_prior(card)
    moved = MovedPrior(prior.weight, prior.pixel_size_um, prior.classes, float(lr_mm))
    device = torch.device("cpu")
    return pooled_dice(
        [(predict_image(model, card, i, device=device, flips=True, atlas_prior=moved), t) for i, t in sections], classes
    )


def learnt_offset(model, card, training: list, tested: list, classes: list[int]) -> dict:
    """The move of the fitted planes that scores best on the training sections, and its test Dice."""
    if card_prior(card) is None:
        return {}
    best = max(LEARN_GRID, key=lambda mm: moved_dice(model, card, mm, training, classes))
    return {
        "learnt_offset_mm": round(float(best), 3),
        "model_dice_learnt_offset": round(moved_dice(model, card, best, tested, classes), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, default=Path(os.environ.get("SEBRE_GLTA", HERE.parent.parent / "shared/data/glta"))
    )
    parser.add_argument("--model", type=Path, help="also score this 50 µm/px checkpoint against both label sets")
    args = parser.parse_args()
    model = load_checkpoint(args.model, "cpu") if args.model else None
    if model and model[1].pixel_size_um != PIXEL_UM:
        raise SystemExit(f"{args.model}: a {model[1].pixel_size_um} µm/px model; this scores {PIXEL_UM} µm/px ones")
    examples = shared_examples(args.data)
    classes = [examples.table.names.index(r) for r in REGIONS]
    offsets, pairs, predicted, training, tested = {}, [], [], [], []
    for ex in examples.examples:
        image, labels = resample(ex.image, ex.classes, ex.pixel_size_um / PIXEL_UM)
        tissue = find_sections(image) > 0
        offset = mirror_axis(image.mean(axis=0), tissue, differ=False) - mirror_axis(labels, labels > 0, differ=True)
        offsets[ex.name] = round(offset * PIXEL_UM, 1)
        if ex.name in TEST:
            pairs.append((labels, ndi.shift(labels, (0, offset), order=0, mode="nearest")))
            tested.append((image, labels))
            if model:
                predicted.append(predict_image(*model, image, device=torch.device("cpu"), flips=True))
        elif ex.name not in VAL:
            training.append((image, labels))
    scores = {}
    if model:
        scores["model_dice"] = round(pooled_dice([(p, a) for p, (a, _) in zip(predicted, pairs)], classes), 4)
        scores["model_dice_moved"] = round(pooled_dice([(p, b) for p, (_, b) in zip(predicted, pairs)], classes), 4)
        scores.update(learnt_offset(*model, training, tested, classes))
    values = np.array(list(offsets.values()))
    print(
        json.dumps(
            {
                "sections": len(values),
                "offset_um_mean": round(float(values.mean()), 1),
                "offset_um_min": round(float(values.min()), 1),
                "offset_um_max": round(float(values.max()), 1),
                "sections_labels_left": int(np.sum(values > 0)),
                "dice_cost": round(1 - pooled_dice(pairs, classes), 4),
                **scores,
                "offset_um": offsets,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
