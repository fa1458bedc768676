"""Dice of a label layer's finest level on the GLTa test sections, at their own 12.5 µm/px: the
smooth finer levels (`finer.py`) against nearest copies of the inference level, as one JSON object.

    python benchmarks/finer_dice.py [--model PATH] [--data ../shared/data/glta]

1. Each TEST section of `examples/train_real_sections.py` is written as an OME-Zarr slide at its own
   pixel size (NGFF 0.4, levels halving down to 256 px, so 12.5, 25 and 50 µm/px).
2. `sebre segment`'s code segments it with the model (default: the shipped one) into `labels/regions`:
   the model runs at its own µm/px (the inference level) and the finer levels are drawn from the
   class margins there.
3. Level 0 of the layer is read as classes (`pred_smooth`), and so is the inference level, brought to
   level 0's pixels by nearest neighbour (`pred_nearest`: what the finer levels held before margins).
4. Both are scored against the section's 12.5 µm labels by `sebre evaluate`'s code: Dice of the six
   regions, pooled over the sections, and their mean; `change` is smooth minus nearest.

Tiles run with their mirror images (`tta`), as the example scores; the figures still differ a little
from its in-memory ones (the slide's own levels, the tiles of a slide), but the comparison here is
between two ways of filling the same level from the same model output.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from sebre_ij.catalog import find_model
from sebre_ij.datasets import shared_examples
from sebre_ij.evaluate import class_plane
from sebre_ij.segment import SegmentOptions, segment
from sebre_ij.slide import open_slide
from sebre_ij.stores import write_slide
from sebre_ij.tiles import resample_nearest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "examples"))
from train_real_sections import REGIONS, TEST, region_dice, write_png  # noqa: E402


def segmented(ex, model: Path, work: Path) -> tuple[np.ndarray, np.ndarray]:
    """(smooth, nearest) class maps at level 0 of one section segmented as a slide."""
    path = work / f"{ex.name}.zarr"
    image = np.round(ex.image * 255).astype(np.uint8)
    write_slide(path, image, ex.classes, ex.pixel_size_um)
    result = segment(path, model, SegmentOptions(labels="regions", tta=True, progress=False, device="cpu"))
    slide = open_slide(path)
    smooth = class_plane(slide, "regions", 0)
    coarse = class_plane(slide, "regions", result.level)
    shape = smooth.shape
    nearest = resample_nearest(coarse, coarse.shape, 0, shape[0], 0, shape[1], shape)
    return smooth, nearest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="checkpoint (default: the shipped mouse model)")
    parser.add_argument(
        "--data",
        type=Path,
        default=Path(os.environ.get("SEBRE_GLTA", HERE.parent.parent / "shared/data/glta")),
        help="the GLTa set folder (default: $SEBRE_GLTA, else ../shared/data/glta beside the repository)",
    )
    args = parser.parse_args()
    model = find_model(args.model)
    sections = [e for e in shared_examples(args.data).examples if e.name in TEST]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for ex in sections:
            smooth, nearest = segmented(ex, model, work)
            for rule, pred in (("smooth", smooth), ("nearest", nearest)):
                write_png(work / rule / "pred" / f"{ex.name}.png", pred.astype(np.uint8))
                write_png(work / rule / "labels" / f"{ex.name}.png", ex.classes)
        dice = {rule: region_dice(work / rule, args.data) for rule in ("smooth", "nearest")}
    change = {r: round(dice["smooth"][r] - dice["nearest"][r], 4) for r in [*REGIONS, "mean"] if dice["nearest"][r]}
    print(
        json.dumps(
            {
                "model": str(model),
                "sections": [e.name for e in sections],
                "pixel_size_um": sections[0].pixel_size_um,
                "dice": {rule: {k: v for k, v in d.items() if k != "mean_all_classes"} for rule, d in dice.items()},
                "change": change,
                "wall_s": round(time.perf_counter() - start, 1),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
