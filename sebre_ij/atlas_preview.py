"""A grid of generated atlas sections beside real ones, in one PNG, for a person to judge at a glance.

python -m sebre_ij.atlas_preview OUT.png --atlas DIR [--real GLTA_DIR] [--n 8] [--pixel-size 50]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .atlas import ATLAS_ENV, Atlas, SectionRecipe, atlas_section, load_atlas
from .errors import UserError


def _rgb(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 of a (C, H, W) image in [0, 1], one channel shown grey."""
    rgb = np.repeat(image, 3, axis=0) if image.shape[0] == 1 else image
    return (np.moveaxis(rgb, 0, -1) * 255 + 0.5).astype(np.uint8)


def _real_panels(folder: Path, n: int, pixel_size_um: float) -> list[tuple[str, Image.Image]]:
    """`n` sections of a real set (its sections.json), spread over the series, at `pixel_size_um`."""
    try:
        entries = json.loads((folder / "sections.json").read_text())["sections"]
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(
            f"{folder / 'sections.json'}: cannot read the real sections ({exc!r}); pass a folder like shared/data/glta"
        ) from None
    panels = []
    for entry in [entries[int(i)] for i in np.linspace(0, len(entries) - 1, n)]:
        image = Image.open(folder / entry["image"]).convert("RGB")
        scale = float(entry["pixel_size_um"]) / pixel_size_um
        size = (round(image.width * scale), round(image.height * scale))
        panels.append((Path(entry["image"]).stem, image.resize(size, Image.Resampling.BOX)))
    return panels


def preview(
    out: str | Path,
    atlas: Atlas,
    real: str | Path | None,
    recipe: SectionRecipe,
    n: int = 12,
    seed: int = 0,
    columns: int = 4,
) -> None:
    """A PNG grid: real sections in the first rows, generated ones after, all at the recipe's pixel size."""
    rng = np.random.default_rng(seed)
    panels = _real_panels(Path(real), columns, recipe.pixel_size_um) if real else []
    for k in range(n):
        image, _, section = atlas_section(atlas, recipe, rng)
        panels.append((f"generated {k} {section.orientation}", Image.fromarray(_rgb(image))))
    cell = (max(p.width for _, p in panels), max(p.height for _, p in panels) + 14)
    rows = -(-len(panels) // columns)
    sheet = Image.new("RGB", (cell[0] * columns, cell[1] * rows), (128, 128, 128))
    draw = ImageDraw.Draw(sheet)
    for k, (name, panel) in enumerate(panels):
        x, y = (k % columns) * cell[0], (k // columns) * cell[1]
        sheet.paste(panel, (x + (cell[0] - panel.width) // 2, y + 14))
        draw.text((x + 4, y + 1), name, fill=(255, 255, 0))
    sheet.save(out)


def main(argv: list[str] | None = None) -> None:
    """`python -m sebre_ij.atlas_preview OUT.png --atlas DIR [--real DIR]`."""
    show = argparse.ArgumentParser(prog="python -m sebre_ij.atlas_preview", description=__doc__.splitlines()[0])
    show.add_argument("out", help="the PNG to write")
    show.add_argument("--atlas", help=f"the CCFv3 folder (default ${ATLAS_ENV})")
    show.add_argument("--real", help="a folder of real sections with sections.json (e.g. shared/data/glta)")
    show.add_argument("--n", type=int, default=12, help="generated sections")
    show.add_argument("--pixel-size", type=float, default=25.0, help="µm per pixel")
    show.add_argument("--seed", type=int, default=0)
    args = show.parse_args(argv)
    try:
        recipe = SectionRecipe(pixel_size_um=args.pixel_size)
        preview(args.out, load_atlas(args.atlas), args.real, recipe, args.n, args.seed)
    except UserError as exc:
        show.exit(2, f"error: {exc}\n")


if __name__ == "__main__":
    main()
