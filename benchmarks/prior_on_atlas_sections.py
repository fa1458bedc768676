"""Dice of a model with and without the atlas prior on sections cut from the atlas, as JSON.

    python benchmarks/prior_on_atlas_sections.py [--atlas DIR] [--model FILE] [--sections 40] [--orientation coronal]

Sections whose planes are known exactly, unlike GLTa's registration-derived labels: cuts (coronal
unless `--orientation` says sagittal or horizontal) drawn by `atlas.atlas_section` with the training
recipe's tilts (sd 3°), in-plane turns, shrinkage, damage and looks, from a seed no training run
uses. Each is segmented at 50 µm/px by the model's semantic branch with mirrored views (`model`),
then with `AtlasPrior.apply` on those probabilities (`prior`). Dice is pooled over the sections for
the six regions GLTa reports; `tilted` pools the sections cut more than 4° off their orientation.
`upside_down` counts the sections read upside down: those whose cortex, found and true, lies on
opposite sides of the tissue's centre (`cortex_side`).
`--ring-mm` sets `atlas_prior.RING_MM`, the glass the fit explains around each section.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from sebre_ij import atlas_prior
from sebre_ij.atlas import SectionRecipe, atlas_section, load_atlas
from sebre_ij.catalog import SHIPPED
from sebre_ij.checkpoint import load_checkpoint
from sebre_ij.infer import FLIPS, tile_reader
from sebre_ij.metrics import confusion, dice_iou
from sebre_ij.model import detect
from sebre_ij.model_input import input_map
from sebre_ij.tiles import tile_grid
from sebre_ij.tissue import SectionMap, find_sections

HERE = Path(__file__).resolve().parent
DEFAULT_ATLAS = HERE.parent.parent / "shared" / "data" / "ccfv3"
sys.path.insert(0, str(HERE.parent / "examples"))
from train_real_sections import REGIONS  # noqa: E402

SEED = 12345
ORIENTATION_AXIS = {"coronal": 1, "sagittal": 0, "horizontal": 2}  # the volume axis each slices across


def probabilities(model: torch.nn.Module, card, image: np.ndarray) -> np.ndarray:
    """(classes, H, W) probabilities of a whole image at the card's µm/px, mirrored views averaged."""
    sections = find_sections(image)
    out = np.zeros((len(card.classes), *image.shape[1:]), np.float32)
    out[0] = 1
    tiles = tile_grid(image.shape[1:], card.tile_size, card.overlap, SectionMap(sections, (0, 0), sections.shape))
    read = tile_reader(image, "cyx", 0, input_map(card.input, image, sections), 1.0)
    with torch.inference_mode():
        for tile in tiles:
            image = torch.from_numpy(read(tile))
            views = [image.flip(d) if d else image for d in FLIPS]
            maps = detect(model, views, instances=False)
            mean = sum(m["semantic"].flip(d) if d else m["semantic"] for m, d in zip(maps, FLIPS)) / len(FLIPS)
            ys, xs = tile.core
            out[:, ys, xs] = mean.numpy()[:, ys.start - tile.y : ys.stop - tile.y, xs.start - tile.x : xs.stop - tile.x]
    return out


def dice(matrices: list[np.ndarray], classes: list[int]) -> float:
    """Mean over `classes` of the Dice pooled over the sections' confusion matrices."""
    per_class, _ = dice_iou(sum(matrices))
    return float(np.mean(per_class[classes]))


def cortex_side(classes: np.ndarray, tissue: np.ndarray, cortex: int) -> np.ndarray | None:
    """(row, column) from the tissue's centre to the cortex's (the dorsal side of a coronal
    section); None without cortex."""
    found = np.argwhere(classes == cortex)
    return None if len(found) == 0 else found.mean(axis=0) - np.argwhere(tissue).mean(axis=0)


def upside_down(found: np.ndarray, truth: np.ndarray, cortex: int) -> bool:
    """Whether the found cortex lies on the other side of the tissue's centre from the true cortex."""
    true_side = cortex_side(truth, truth > 0, cortex)
    found_side = cortex_side(found, truth > 0, cortex)
    return true_side is not None and found_side is not None and float(true_side @ found_side) < 0


def tilt_deg(section, axis: int) -> float:
    """How far the section's plane is turned off its orientation (its normal off that volume axis)."""
    normal = np.cross(section.plane.u, section.plane.v)
    return math.degrees(math.acos(min(1.0, abs(normal[axis]) / np.linalg.norm(normal))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--atlas", type=Path, default=DEFAULT_ATLAS, help="the CCFv3 folder (../shared/data/ccfv3)")
    parser.add_argument("--model", type=Path, default=SHIPPED)
    parser.add_argument("--sections", type=int, default=40)
    parser.add_argument("--ring-mm", type=float, default=atlas_prior.RING_MM)
    parser.add_argument("--orientation", choices=list(ORIENTATION_AXIS), default="coronal")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    atlas_prior.RING_MM = args.ring_mm
    atlas = load_atlas(args.atlas)
    model, card = load_checkpoint(args.model, "cpu")
    prior = atlas_prior.AtlasPrior.for_model(card.classes, card.pixel_size_um, card.atlas_prior or 1.0)
    regions = [card.classes.index(r) for r in REGIONS]
    recipe = SectionRecipe(pixel_size_um=card.pixel_size_um, orientations={args.orientation: 1.0})
    rng = np.random.default_rng(SEED)
    rows = {"model": [], "prior": []}
    flipped = {"model": 0, "prior": 0}
    cortex = card.classes.index("cortex")
    tilts, seconds = [], 0.0
    for _ in range(args.sections):
        image, truth, section = atlas_section(atlas, recipe, rng)
        p = probabilities(model, card, image)
        start = time.perf_counter()
        fused = prior.apply(p)
        seconds += time.perf_counter() - start
        for name, found in (("model", p.argmax(0)), ("prior", fused.argmax(0))):
            rows[name].append(confusion(found, truth, len(card.classes)))
            flipped[name] += upside_down(found, truth, cortex)
        tilts.append(tilt_deg(section, ORIENTATION_AXIS[args.orientation]))
    tilted = [i for i, t in enumerate(tilts) if t > 4]
    report = {
        "model": str(args.model),
        "sections": args.sections,
        "orientation": args.orientation,
        "ring_mm": args.ring_mm,
        "tilted_sections": len(tilted),
        "prior_s_mean": round(seconds / args.sections, 3),
    }
    for name, matrices in rows.items():
        report[f"{name}_dice"] = round(dice(matrices, regions), 4)
        report[f"{name}_dice_tilted"] = round(dice([matrices[i] for i in tilted], regions), 4)
        report[f"{name}_upside_down"] = flipped[name]
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
