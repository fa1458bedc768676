"""A PNG a person can glance at: each section with its regions filled and outlined, side by side."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage as ndi
from skimage.segmentation import find_boundaries

from .tissue import to_unit

PANEL_HEIGHT = 360


def overlay(
    image: np.ndarray, values: np.ndarray, colors: dict[int, tuple[int, int, int]], alpha: float = 0.4
) -> np.ndarray:
    """RGB uint8 of a (C, H, W) image with label values filled at `alpha` and outlined."""
    grey_or_rgb = to_unit(image)
    rgb = np.repeat(grey_or_rgb[:1], 3, axis=0) if grey_or_rgb.shape[0] != 3 else grey_or_rgb
    rgb = (np.moveaxis(rgb, 0, -1) * 255).astype(np.float32)
    lut = np.zeros((int(values.max(initial=0)) + 1, 3), np.float32)
    for value, colour in colors.items():
        if value < len(lut):
            lut[value] = colour
    fill = lut[values]
    inside = values > 0
    rgb[inside] = (1 - alpha) * rgb[inside] + alpha * fill[inside]
    edges = find_boundaries(values, mode="inner") & inside
    rgb[edges] = fill[edges]
    return rgb.clip(0, 255).astype(np.uint8)


def section_boxes(sections: np.ndarray) -> list[tuple[int, slice, slice]]:
    return [(i + 1, s[0], s[1]) for i, s in enumerate(ndi.find_objects(sections)) if s is not None]


def write_preview(
    path: str | Path,
    image: np.ndarray,
    values: np.ndarray,
    sections: np.ndarray,
    colors: dict[int, tuple[int, int, int]],
) -> None:
    """One panel per section (its bounding box on this level), scaled to a common height."""
    rgb = overlay(image, values, colors)
    boxes = section_boxes(sections) or [(0, slice(0, rgb.shape[0]), slice(0, rgb.shape[1]))]
    save_sheet(path, [panel(rgb[ys, xs], f"section s{number}") for number, ys, xs in boxes])


def panel(rgb: np.ndarray, caption: str) -> Image.Image:
    """An RGB crop scaled to the common height, with a caption above."""
    crop = Image.fromarray(rgb)
    width = max(1, round(crop.width * PANEL_HEIGHT / crop.height))
    out = Image.new("RGB", (width, PANEL_HEIGHT + 20), "white")
    out.paste(crop.resize((width, PANEL_HEIGHT), Image.Resampling.NEAREST), (0, 20))
    ImageDraw.Draw(out).text((4, 4), caption, fill="black")
    return out


def save_sheet(path: str | Path, panels: list[Image.Image]) -> None:
    """Panels side by side, 8 px apart, as one PNG."""
    sheet = Image.new("RGB", (sum(p.width for p in panels) + 8 * (len(panels) - 1), PANEL_HEIGHT + 20), "white")
    x = 0
    for p in panels:
        sheet.paste(p, (x, 0))
        x += p.width + 8
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)


def write_comparison(
    path: str | Path,
    image: np.ndarray | None,
    truth: np.ndarray,
    pred: np.ndarray,
    where: np.ndarray,
    colors: dict[int, tuple[int, int, int]],
    title: str,
) -> None:
    """Truth (left) and prediction (right) class outlines over one section's box (`where`), on
    the image when there is one, for a person to see where the two disagree."""
    ys, xs = np.nonzero(where)
    box = (slice(max(ys.min() - 4, 0), ys.max() + 5), slice(max(xs.min() - 4, 0), xs.max() + 5))
    keep = where[box]
    under = np.ones((1, *keep.shape), np.float32) if image is None else image[(slice(None), *box)]
    save_sheet(
        path,
        [
            panel(overlay(under, np.where(keep, classes[box], 0), colors, alpha=0.15), f"{title}: {label}")
            for label, classes in (("truth", truth), ("prediction", pred))
        ],
    )
