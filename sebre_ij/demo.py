"""`sebre demo`: the whole path on built-in data, in a few minutes on a laptop's CPU, with no training.

1. `demo_slide`: four coronal sections cut at different depths from the small copy of the Allen
   CCFv3 class volume the package carries (data/ccf_classes_50um.npz: 50 µm voxels, the 12 classes),
   rendered as DAB brightfield (render.py), laid on glass; their atlas labels are the truth layer;
2. `segment` with the shipped model (catalog.py): labels, RoiSet.zip, GeoJSON, measurements, preview;
3. the regions scored against the truth (evaluate.compare_layers).

Atlas data: Allen Institute for Brain Science, CCFv3 2017 (Wang et al., Cell 2020), Allen terms of use.
"""

from __future__ import annotations

import argparse
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from .atlas import atlas_folder, read_tree
from .atlas_prior import VOLUME, read_volume
from .catalog import find_model
from .checkpoint import read_card
from .evaluate import compare_layers
from .exports import Exports
from .render import Look, StructureTree, render
from .segment import SegmentOptions, segment
from .slide import open_slide
from .stores import write_slide
from .synth import CLASSES

VOXEL_UM = 50.0
# brightfield DAB on white glass, one stain, no template: the look of the GLTa sections
LOOK = Look(
    fluorescence=0.0,
    template=0.0,
    synthseg=0.0,
    stains={"dab": 1.0},
    counterstain=0.0,
    coarse=0.0,
    white_glass=1.0,
    optical_density=(0.9, 1.4),
)


@dataclass(frozen=True)
class DemoSlide:
    """What the demo slide holds: anteroposterior positions of its sections (fractions of the
    brain's length, anterior last), the level-0 pixel size, the glass around each section."""

    positions: tuple[float, ...] = (0.30, 0.42, 0.52, 0.64)
    pixel_size: float = 12.5
    margin_px: int = 60
    seed: int = 2


def build_demo_atlas(atlas: str | Path | None, out: Path = VOLUME) -> Path:
    """The package's small class volume (atlas_prior.VOLUME): the CCFv3 class volume at 50 µm (every
    other voxel) and its class names. `python -m sebre_ij.demo build-atlas --atlas ../shared/data/ccfv3`
    rebuilds it."""
    folder = atlas_folder(atlas)
    classes = tifffile.imread(folder / "classes_25um.tif")[::2, ::2, ::2]
    names = np.array(read_tree(folder / "structures.csv").class_names)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, classes=classes, names=names)
    return out


def class_tree() -> StructureTree:
    """The 12 classes as structures of their own, for rendering from the class volume alone."""
    n = len(CLASSES)
    ids = np.arange(n)
    return StructureTree(
        ids, ids.astype(np.int32), np.ones(n, np.int32), ids.astype(np.uint8), tuple(c for c, _ in CLASSES)
    )


def coronal(volume: np.ndarray, position: float, pixel_size: float) -> np.ndarray:
    """The coronal class map at `position` along the brain's length, dorsal side up, at `pixel_size`
    µm/px (each voxel repeated), cropped to the brain."""
    brain = np.flatnonzero(volume.any(axis=(0, 2)))
    plane = volume[:, int(brain[0] + position * (brain[-1] - brain[0])), :].T[::-1, ::-1]
    rows, cols = np.flatnonzero(plane.any(1)), np.flatnonzero(plane.any(0))
    plane = plane[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    step = VOXEL_UM / pixel_size
    index = [np.minimum((np.arange(round(n * step)) / step).astype(int), n - 1) for n in plane.shape]
    return plane.take(index[0], 0).take(index[1], 1)


def demo_slide(path: Path, spec: DemoSlide = DemoSlide()) -> Path:
    """The demo store at `path` (made anew): the sections in a row of two, their truth as labels/truth."""
    volume = read_volume().classes
    rng = np.random.default_rng(spec.seed)
    maps = [np.pad(coronal(volume, p, spec.pixel_size), spec.margin_px) for p in spec.positions]
    cell = tuple(max(m.shape[i] for m in maps) for i in (0, 1))
    columns = 2
    rows = -(-len(maps) // columns)
    image = np.ones((3, rows * cell[0], columns * cell[1]), np.float32)
    labels = np.zeros(image.shape[1:], np.uint8)
    tree = class_tree()
    for k, classes in enumerate(maps):
        y, x = (k // columns) * cell[0], (k % columns) * cell[1]
        no_template = np.zeros(classes.shape, np.float32)  # LOOK never draws from the template
        picture = render(classes, classes > 0, lambda t=no_template: t, {}, tree, spec.pixel_size, LOOK, rng)
        image[:, y : y + classes.shape[0], x : x + classes.shape[1]] = picture
        labels[y : y + classes.shape[0], x : x + classes.shape[1]] = classes
    if path.exists():
        shutil.rmtree(path)
    write_slide(path, (np.clip(image, 0, 1) * 255).round().astype(np.uint8), labels, spec.pixel_size)
    return path


def run_demo(out: str | Path = "sebre-demo") -> dict:
    """The demo's three steps; returns what the command prints."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = find_model(None)
    slide = demo_slide(out / "demo.zarr")
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Rebuild the demo's small class volume from the CCFv3 folder.")
    parser.add_argument("command", choices=["build-atlas"])
    parser.add_argument("--atlas", help="the CCFv3 folder (default: $SEBRE_ATLAS)")
    args = parser.parse_args(argv)
    print(build_demo_atlas(args.atlas))


if __name__ == "__main__":
    main()
