"""Tissue and section masks from a coarse pyramid level.

Only tiles that touch tissue are read and run, so time follows tissue area rather than glass, and
each connected piece of tissue becomes a numbered section carried through to labels and ROIs.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage import filters, morphology, segmentation

from .slide import Slide

COARSE_MAX_SIDE = 1024  # the tissue level is the finest whose long side is at most this


def to_unit(image: np.ndarray) -> np.ndarray:
    """Scale pixel values to [0, 1] by dtype, so models and masks see the same numbers on any slide."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    if image.dtype == np.uint16:
        return image.astype(np.float32) / 65535.0
    out = np.nan_to_num(image.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    return np.clip(out, 0.0, 1.0) if out.max(initial=0) <= 1.0 else out / max(float(out.max()), 1e-6)


def coarse_level(slide: Slide) -> int:
    fits = [i for i in range(len(slide.levels)) if max(slide.yx_shape(i)) <= COARSE_MAX_SIDE]
    return fits[0] if fits else len(slide.levels) - 1


def tissue_mask(image: np.ndarray) -> np.ndarray:
    """Boolean tissue mask of a (C, Y, X) image, brightfield (dark on bright) or fluorescence."""
    grey = to_unit(image).mean(axis=0)
    lo, hi = np.percentile(grey, [0.5, 99.5])
    grey = np.clip((grey - lo) / max(hi - lo, 1e-6), 0, 1)
    if np.median(grey) > 0.5:  # most of a slide is glass: bright glass means brightfield
        grey = 1.0 - grey
    grey = filters.gaussian(grey, sigma=2)
    if grey.max() - grey.min() < 0.05:
        return np.zeros(grey.shape, bool)
    mask = grey > filters.threshold_otsu(grey)
    mask = morphology.closing(mask, morphology.disk(3))
    return ndi.binary_fill_holes(mask)


def reading_order(labels: np.ndarray) -> np.ndarray:
    """Renumber sections 1..N top-to-bottom in rows, left-to-right within a row."""
    n = int(labels.max())
    if n == 0:
        return labels
    objs = ndi.find_objects(labels)
    boxes = [(s[0].start, s[0].stop, s[1].start, s[1].stop, i + 1) for i, s in enumerate(objs) if s is not None]
    boxes.sort(key=lambda b: b[0])
    rows: list[list[tuple]] = []
    for b in boxes:  # a box starts a new row when it begins below the current row's middle
        if rows and b[0] < np.mean([(r[0] + r[1]) / 2 for r in rows[-1]]):
            rows[-1].append(b)
        else:
            rows.append([b])
    order = [b[4] for row in rows for b in sorted(row, key=lambda b: b[2])]
    lut = np.zeros(n + 1, labels.dtype)
    lut[order] = np.arange(1, len(order) + 1, dtype=labels.dtype)
    return lut[labels]


def find_sections(image: np.ndarray, min_area_fraction: float = 0.05, margin_px: int = 3) -> np.ndarray:
    """Section labels (1..N in reading order) of a coarse (C, Y, X) image, grown by a small margin.

    Pieces smaller than `min_area_fraction` of the largest are dust, not sections.
    """
    labels, n = ndi.label(tissue_mask(image))
    if n == 0:
        return labels.astype(np.uint16)
    areas = np.bincount(labels.ravel())[1:]
    keep = np.flatnonzero(areas >= min_area_fraction * areas.max()) + 1
    labels = np.where(np.isin(labels, keep), labels, 0)
    labels = segmentation.expand_labels(reading_order(ndi.label(labels > 0)[0]), margin_px)
    return labels.astype(np.uint16)


def coarse_sections(slide: Slide, z: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """The coarse level's image, its sections and the level's index.

    A slide without a small enough level (no pyramid) is read with a stride, so the tissue
    image stays about COARSE_MAX_SIDE pixels whatever the slide's size."""
    level = coarse_level(slide)
    stride = -(-max(slide.yx_shape(level)) // COARSE_MAX_SIDE)
    image = np.asarray(slide.plane(level, z)[:, ::stride, ::stride])
    return image, find_sections(image), level
