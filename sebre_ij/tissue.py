"""Tissue and section masks from a coarse pyramid level.

Only tiles that touch tissue are read and run, so time follows tissue area rather than glass, and
each connected piece of tissue becomes a numbered section carried through to labels and ROIs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage import filters, morphology, segmentation

from .errors import UserError
from .slide import Slide

COARSE_MAX_SIDE = 1024  # the tissue level is the finest whose long side is at most this
MARGIN_PX = 3  # sections are grown by this into the glass, at the level they are found on
EXTREME = 0.01  # percentile of the picture's range ends, so a sliver of tissue still reaches one end
GLASS_END = 0.25  # glass lies in this lowest share of a picture's range (tissue bright on dark)
MIN_STEP = 0.1  # tissue lies at least this share of the range above the glass


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


def _grey(image: np.ndarray) -> np.ndarray:
    return to_unit(image).mean(axis=0)


def scanner_black(image: np.ndarray) -> np.ndarray:
    """Where a brightfield scan holds no data, (H, W) bool: on a picture whose glass is bright
    (`_glass_is_bright`), pixels whose every channel is exactly 0, connected to the picture's edge,
    beside pixels brighter than the middle of the picture's range. A mosaic scanner writes that black
    outside the regions it scanned, and so does a zarr chunk never written. A fluorescence scan's
    glass may be exactly 0 too: it is glass already, and stays as it is."""
    pixels = to_unit(image)
    zero = ~pixels.any(axis=0)
    none = np.zeros(zero.shape, bool)
    if not zero.any():
        return none
    black = _joined_to_edge(zero)
    beside = _beside(black)
    if not black.any() or not beside.any() or not _glass_is_bright(_stretched(pixels)):
        return none
    grey = pixels.mean(axis=0)
    lo, hi = np.percentile(grey[~black], [EXTREME, 100 - EXTREME])
    return black if np.median(grey[beside]) > (lo + hi) / 2 else none


def _edge(image: np.ndarray) -> np.ndarray:
    """The picture's outermost pixels, (2 H + 2 W,): top row, bottom row, left and right columns."""
    return np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])


def _joined_to_edge(mask: np.ndarray) -> np.ndarray:
    """The pieces of `mask` that reach the picture's edge."""
    pieces, _ = ndi.label(mask)
    edge = np.unique(_edge(pieces))
    return np.isin(pieces, edge[edge > 0])


def _beside(mask: np.ndarray) -> np.ndarray:
    """The 2 px around `mask`."""
    return ndi.binary_dilation(mask, iterations=2) & ~mask


def without_scanner_black(image: np.ndarray) -> tuple[np.ndarray, bool]:
    """`image` in [0, 1] with its scanner black (`scanner_black`) painted the glass beside it (its
    median colour), and whether it had any."""
    pixels = to_unit(image)
    black = scanner_black(pixels)
    if not black.any():
        return pixels, False
    painted = pixels.copy()
    painted[:, black] = np.median(pixels[:, _beside(black)], axis=1)[:, None]
    return painted, True


def _stretched(image: np.ndarray) -> np.ndarray:
    """The grey picture stretched between its EXTREME and 100 - EXTREME percentiles, so that tissue
    covering a ten-thousandth of it still reaches the end of the range."""
    grey = _grey(image)
    lo, hi = np.percentile(grey, [EXTREME, 100 - EXTREME])
    return np.clip((grey - lo) / max(hi - lo, 1e-6), 0, 1)


def _edge_is_glass(unit: np.ndarray, bright: bool) -> bool:
    """Whether the picture's outermost pixels lie in the glass's end of the range (GLASS_END)."""
    edge = float(np.median(_edge(unit)))
    return edge > 1 - GLASS_END if bright else edge < GLASS_END


def _glass_is_bright(unit: np.ndarray) -> bool:
    """Whether a stretched picture's glass is bright (brightfield) or dark (fluorescence).

    Notes
    -----
    Glass is bright where the picture's median is in the upper half of its range: most of a slide
    is glass. A single section cropped with a margin of glass breaks that rule: its median is
    tissue, and the tissue mask of that polarity is then the whole picture. Where it is, and the
    picture's edge lies in the glass's end of the range for the other polarity, the other one holds."""
    bright = bool(np.median(unit) > 0.5)
    if _edge_is_glass(unit, not bright) and _mask(unit, bright).all():
        return not bright
    return bright


def bright_glass(image: np.ndarray) -> bool:
    """Bright glass means brightfield, dark glass fluorescence (`_glass_is_bright`)."""
    return _glass_is_bright(_stretched(image))


def of_section(labels: np.ndarray, section: int) -> np.ndarray:
    """Where `labels` hold this section; section 0 stands for every section."""
    return labels == section if section else labels > 0


def tissue_mask(image: np.ndarray, brightfield: bool | None = None) -> np.ndarray:
    """Boolean tissue mask of a (C, Y, X) image, brightfield (dark on bright) or fluorescence;
    `brightfield` is decided from the image itself unless given (`_glass_is_bright`).

    Scanner black is glass (`without_scanner_black`); the picture is stretched (`_stretched`), then
    thresholded (`tissue_threshold`)."""
    unit = _stretched(without_scanner_black(image)[0])
    return _mask(unit, _glass_is_bright(unit) if brightfield is None else brightfield)


def _mask(unit: np.ndarray, bright: bool) -> np.ndarray:
    """The tissue mask of a stretched picture with bright (brightfield) or dark glass."""
    grey = 1.0 - unit if bright else unit
    grey = ndi.gaussian_filter(grey, sigma=2, mode="nearest", truncate=4.0)
    if grey.max() - grey.min() < 0.05:
        return np.zeros(grey.shape, bool)
    mask = grey > tissue_threshold(grey)
    mask = ndi.binary_closing(np.pad(mask, 3, mode="edge"), morphology.disk(3))[3:-3, 3:-3]  # as skimage's closing
    return fill_holes(mask)


def tissue_threshold(grey: np.ndarray) -> float:
    """The level above which a picture in [0, 1], tissue bright on dark glass, is tissue.

    Notes
    -----
    Otsu's threshold, moved where it would split one class. Glass is one narrow peak of the
    histogram: where that peak lies in the lowest GLASS_END of the range, the threshold is at least
    6 robust sds of the glass (measured on the peak's dark side, where no tissue is) and MIN_STEP
    above it, so that a sliver of tissue on a whole slide of glass does not make Otsu split the
    glass's own noise. Where tissue fills most of the picture (its median above GLASS_END), the
    threshold is at most 30 % of the way from the glass (the 0.5th percentile) to that median, so
    that Otsu does not split the tissue into light and dark."""
    threshold = float(filters.threshold_otsu(grey))
    counts, edges = np.histogram(grey, bins=256, range=(0.0, 1.0))
    peak = float(edges[np.argmax(counts)] + 0.5 / 256)
    if peak < GLASS_END:
        below = grey[grey <= peak]
        spread = 1.4826 * float(np.median(peak - below)) if below.size else 0.0
        threshold = max(threshold, peak + max(6 * spread, MIN_STEP))
    median = float(np.median(grey))
    if median > GLASS_END:
        glass = float(np.percentile(grey, 0.5))
        threshold = min(threshold, glass + 0.3 * (median - glass))
    return threshold


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """ndimage.binary_fill_holes, by labelling the glass once (a third of the time): glass not
    connected to the image's edge is a hole."""
    return mask | ~_joined_to_edge(~mask)


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


def find_sections(
    image: np.ndarray, min_area_fraction: float = 0.05, margin_px: int = MARGIN_PX, brightfield: bool | None = None
) -> np.ndarray:
    """Section labels (1..N in reading order) of a coarse (C, Y, X) image, grown by a small margin.

    Pieces smaller than `min_area_fraction` of the largest are dust, not sections.
    """
    labels, n = ndi.label(tissue_mask(image, brightfield))
    if n == 0:
        return labels.astype(np.uint16)
    areas = np.bincount(labels.ravel())[1:]
    keep = np.flatnonzero(areas >= min_area_fraction * areas.max()) + 1
    labels = np.where(np.isin(labels, keep), labels, 0)
    return grow(reading_order(ndi.label(labels > 0)[0]), margin_px).astype(np.uint16)


def grow(labels: np.ndarray, margin_px: int) -> np.ndarray:
    """Sections grown by `margin_px` into the glass, each glass pixel to the nearest section
    (skimage's expand_labels). A dilation gives the same where no glass pixel is that near to two
    sections, which holds when their boxes, each grown by the margin, do not meet (the usual slide)."""
    if margin_px <= 0 or not labels.any():
        return labels
    if not _boxes_meet(labels, margin_px):
        return np.where(
            labels > 0, labels, ndi.grey_dilation(labels, footprint=morphology.disk(margin_px).astype(bool))
        )
    return segmentation.expand_labels(labels, margin_px)


def _boxes_meet(labels: np.ndarray, margin: int) -> bool:
    """Do any two sections' bounding boxes, each grown by `margin`, overlap?"""
    boxes = np.array(
        [(s[0].start, s[0].stop, s[1].start, s[1].stop) for s in ndi.find_objects(labels) if s is not None]
    )
    y0, y1, x0, x1 = (boxes + [-margin, margin, -margin, margin]).T
    meet = (y0[:, None] < y1) & (y0 < y1[:, None]) & (x0[:, None] < x1) & (x0 < x1[:, None])
    return int(meet.sum()) > len(boxes)  # each box meets itself


def coarse_sections(slide: Slide, z: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """The coarse level's image, its sections and the level's index.

    A slide without a small enough level (no pyramid) is read with a stride, so the tissue
    image stays about COARSE_MAX_SIDE pixels whatever the slide's size."""
    level = coarse_level(slide)
    stride = -(-max(slide.yx_shape(level)) // COARSE_MAX_SIDE)
    image = slide.plane(level, z, slice(None, None, stride), slice(None, None, stride))
    return image, find_sections(image), level


@dataclass(frozen=True)
class SectionMap:
    """Section numbers over a window of a tissue grid, looked up from any level by pixel centres.

    On a slide that is mostly glass the window is the tissue's bounding box at a finer level
    than the whole-slide coarse image, so sections stay as sharp as on a small slide."""

    labels: np.ndarray  # (h, w) section numbers inside the window
    origin: tuple[int, int]  # the window's top-left in tissue-grid pixels
    shape: tuple[int, int]  # the whole tissue grid

    @property
    def count(self) -> int:
        return int(self.labels.max(initial=0))

    def _index(self, lo: int, hi: int, length: int, axis: int) -> np.ndarray:
        grid = np.minimum(
            ((np.arange(lo, hi) + 0.5) * self.shape[axis] / length).astype(np.int64), self.shape[axis] - 1
        )
        return grid - self.origin[axis]

    def sample(self, ys: slice, xs: slice, level_shape: tuple[int, int]) -> np.ndarray:
        """Section of every pixel of a window of a level of `level_shape` (nearest), 0 off the map."""
        rows, cols = (
            self._index(ys.start, ys.stop, level_shape[0], 0),
            self._index(xs.start, xs.stop, level_shape[1], 1),
        )
        ok_r = (rows >= 0) & (rows < self.labels.shape[0])
        ok_c = (cols >= 0) & (cols < self.labels.shape[1])
        if ok_r.all() and ok_c.all():
            return self.labels.take(rows, 0).take(cols, 1)
        out = np.zeros((len(rows), len(cols)), self.labels.dtype)
        out[np.ix_(ok_r, ok_c)] = self.labels[np.ix_(rows[ok_r], cols[ok_c])]
        return out

    def touches(self, ys: slice, xs: slice, level_shape: tuple[int, int], section: int = 0) -> bool:
        """Any section (or this `section`) under a window of a level (its tissue pixels, rounded outwards)."""
        window = []
        for axis, s in enumerate((ys, xs)):
            f = self.shape[axis] / level_shape[axis]
            lo = int(s.start * f)
            hi = max(math.ceil(s.stop * f), lo + 1)
            window.append(slice(max(lo - self.origin[axis], 0), max(hi - self.origin[axis], 0)))
        return bool(of_section(self.labels[tuple(window)], section).any())

    def boxes(self, level_shape: tuple[int, int]) -> dict[int, tuple[int, int, int, int]]:
        """Each section's bounding box (y0, y1, x0, x1) on a level of `level_shape`, rounded outwards."""
        out = {}
        for i, box in enumerate(ndi.find_objects(self.labels), start=1):
            if box is not None:
                axes = list(zip(box, self.origin, level_shape, self.shape))
                lo = [math.floor((o + s.start) * n / g) for s, o, n, g in axes]
                hi = [min(math.ceil((o + s.stop) * n / g), n) for s, o, n, g in axes]
                out[i] = (lo[0], hi[0], lo[1], hi[1])
        return out


def _box(sections: np.ndarray, pad: float = 0.1) -> tuple[tuple, tuple] | None:
    """Bounding box of all sections, as fractions of the level per axis: the tissue's (the sections
    less their grown margin), and padded by `pad` of its size (glass for the mask's threshold)."""
    rows, cols = np.flatnonzero(sections.any(1)), np.flatnonzero(sections.any(0))
    if rows.size == 0:
        return None
    tight, padded = [], []
    for idx, n in ((rows, sections.shape[0]), (cols, sections.shape[1])):
        margin = max(2, int((idx[-1] + 1 - idx[0]) * pad))
        inner = (min(idx[0] + MARGIN_PX, idx[-1]), max(idx[-1] + 1 - MARGIN_PX, idx[0] + 1))
        tight.append((inner[0] / n, inner[1] / n))
        padded.append((max(0, idx[0] - margin) / n, min(n, idx[-1] + 1 + margin) / n))
    return tuple(tight), tuple(padded)


def tissue_sections(slide: Slide, z: int = 0) -> tuple[np.ndarray, np.ndarray, SectionMap]:
    """(coarse image, its sections, sharp section map) of one plane.

    The coarse image (long side about COARSE_MAX_SIDE) finds the tissue; when the tissue's box is
    much smaller than the slide, sections are found again on that box alone at a finer level,
    so that two sections a few hundred µm apart stay two whatever the slide's glass area."""
    image, coarse, level = coarse_sections(slide, z)
    whole = SectionMap(coarse, (0, 0), coarse.shape)
    boxes = _box(coarse)
    if boxes is None:
        return image, coarse, whole
    fine, stride, window = _finer_window(slide, *boxes)
    if stride * slide.pixel_size(fine) > 0.67 * slide.pixel_size(level) * (slide.yx_shape(level)[0] / coarse.shape[0]):
        return image, coarse, whole  # no sharper than the coarse image: keep it
    crop = slide.plane(fine, z, *(slice(w.start * stride, w.stop * stride, stride) for w in window))
    labels = find_sections(crop, brightfield=bright_glass(image))
    grid = tuple(-(-n // stride) for n in slide.yx_shape(fine))
    return image, coarse, SectionMap(labels, (window[0].start, window[1].start), grid)


def _finer_window(slide: Slide, tissue, padded) -> tuple[int, int, tuple[slice, slice]]:
    """The finest level showing the tissue's box within COARSE_MAX_SIDE pixels (with a stride if
    none does): the level a slide of just this tissue would be seen at, so its sections come out
    as on such a slide. And the padded box in that level's strided grid."""

    def extent(level):
        h, w = slide.yx_shape(level)
        return max((tissue[0][1] - tissue[0][0]) * h, (tissue[1][1] - tissue[1][0]) * w)

    fits = [i for i in range(len(slide.levels)) if extent(i) <= COARSE_MAX_SIDE]
    level = fits[0] if fits else len(slide.levels) - 1
    stride = max(1, math.ceil(extent(level) / COARSE_MAX_SIDE))
    h, w = (-(-n // stride) for n in slide.yx_shape(level))
    window = (
        slice(int(padded[0][0] * h), math.ceil(padded[0][1] * h)),
        slice(int(padded[1][0] * w), math.ceil(padded[1][1] * w)),
    )
    return level, stride, window


def glass_colour(image: np.ndarray, sections: np.ndarray) -> np.ndarray:
    """Per-channel median of the coarse level outside tissue, scanner black painted as the glass
    beside it: what padding past the edge looks like."""
    image = without_scanner_black(image)[0]
    outside = sections == 0
    if not outside.any():
        return np.median(image.reshape(image.shape[0], -1), axis=1)
    return np.median(image[:, outside], axis=1)


@dataclass(frozen=True)
class PlaneTissue:
    """One plane's tissue: the coarse image it was found on with its section labels, the sharp
    section map tiles go by, and the glass colour per channel that pads tiles past the edge."""

    image: np.ndarray
    coarse: np.ndarray
    sections: SectionMap
    glass: np.ndarray


def find_tissue(slide: Slide) -> list[PlaneTissue]:
    """Glass colour and sections of every plane; a slide without tissue is refused before anything is written."""
    planes = []
    for z in range(slide.n_planes):
        image, coarse, sections = tissue_sections(slide, z)
        planes.append(PlaneTissue(image, coarse, sections, glass_colour(image, coarse)))
    if not any(plane.sections.count for plane in planes):
        raise UserError(
            f"{slide.url}: no tissue found (the coarse level looks like blank glass); check that this is the "
            "right slide and that its pixels are not all one value"
        )
    return planes
