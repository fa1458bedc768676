"""Regions from a label image, as polygons in level-0 pixels: what ROIs and GeoJSON are made of.

Coordinate convention
---------------------
Polygons are in level-0 pixels with ImageJ's convention: integer coordinates are
pixel *corners*, so pixel (row r, column c) covers x in [c, c+1), y in [r, r+1).
Outlines are marching-squares contours at level 0.5 of the region's mask: they
pass through the midpoints of the boundary pixels' outer edges and cut each
convex corner by a quarter-pixel diagonal. A filled w x h rectangle therefore
has area w*h - 0.5, a lone pixel is a diamond of area 0.5, and rasterising an
outline with ImageJ's rule (pixel centre inside) gives back the mask exactly
before simplification. Foreground is 4-connected, background 8-connected.

With the model's class margins (``regions_from_labels(margins=...)``, at the layer's inference
level) the contour crosses each segment between pixel centres in and out of the region where
their margins balance instead of at its midpoint: the outline the finer levels draw (finer.py),
with sub-pixel vertices; rasterised, it gives that outline rather than the mask.

Rings are stored open (the first vertex is not repeated at the end); exteriors
have positive and holes negative signed (shoelace) area in (x, y).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from skimage.measure import find_contours

DEFAULT_COLOR = (255, 255, 0)  # a region whose layer gives it no colour
DEFAULT_TOLERANCE = 0.4


Ring = np.ndarray


Part = tuple[Ring, list[Ring]]


@dataclass
class Region:
    """One labelled brain region of one section, outlined in level-0 pixels.

    ``polygons`` holds one (exterior, [holes]) per connected part; each ring is an
    (N, 2) float64 array of x, y vertices (see the module docstring).
    """

    value: int
    name: str
    class_index: int
    class_name: str
    section: int
    color: tuple[int, int, int]
    score: float | None
    polygons: list[Part]
    position: int = 0  # ImageJ's 1-based stack position (the z plane + 1); 0 = every plane
    extra: dict = field(default_factory=dict)  # more ROI properties, e.g. the coordinate level and its scale


def region_name(section: int, name: str, instance: int | None = None) -> str:
    """Name a region as Fiji users see it: ``s<section>-<region>``, ``-<n>`` added per instance."""
    return f"s{int(section)}-{name}" + (f"-{int(instance)}" if instance is not None else "")


def label_properties(properties: dict[int, dict], value: int) -> dict:
    """Properties of one label value with defaults, so hand-edited labels still export."""
    props = properties.get(int(value), {})
    score = props.get("score")
    return {
        "name": str(props.get("name", value)),
        "class": int(props.get("class", 0)),
        "section": int(props.get("section", 0)),
        "color": tuple(int(c) for c in props.get("color", DEFAULT_COLOR)[:3]),
        "score": None if score is None else float(score),
        "instance": None if props.get("instance") is None else int(props["instance"]),
    }


def regions_from_labels(
    labels: np.ndarray,
    properties: dict[int, dict],
    scale: tuple[float, float] = (1.0, 1.0),
    offset: tuple[float, float] = (0.0, 0.0),
    tolerance: float | None = None,
    margins: np.ndarray | None = None,
) -> list[Region]:
    """Outline every label value of a level-L label image in level-0 pixels.

    With the model's class ``margins`` (the layer's margin array at its inference level, 0 where
    none is known), an outline crosses the segment between a pixel in the region and one out of it
    where their margins balance (at mA / (mA + mB) from the first), the rule the finer levels
    follow (finer.py), rather than at its midpoint: sub-pixel vertices along the smooth outline
    the model's probabilities draw. Equal margins, or none known, give the outline above.

    ``scale`` is (sy, sx), the size of a level-L pixel in level-0 pixels, and
    ``offset`` (oy, ox) is added after scaling. ``tolerance`` is the
    Douglas-Peucker tolerance in level-L pixels (None: 0.4; 0: keep every vertex).
    Each value's bounding box is cropped first, so cost grows with region
    outlines, not with the image.

    >>> labels = np.zeros((4, 4), int); labels[1:3, 1:3] = 7
    >>> [r.name for r in regions_from_labels(labels, {7: {"name": "cortex", "section": 1}})]
    ['s1-cortex']
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be a 2D integer array, got {labels.dtype} {labels.shape}")
    tol = DEFAULT_TOLERANCE if tolerance is None else float(tolerance)
    outlines, chains = [], []
    for index, box in enumerate(ndimage.find_objects(labels)):
        if box is None:
            continue
        mask = np.zeros((box[0].stop - box[0].start + 2, box[1].stop - box[1].start + 2), np.float32)
        mask[1:-1, 1:-1] = labels[box] == index + 1
        contours = find_contours(mask, 0.5) if margins is None else find_contours(_field(mask, margins, box), 0.0)
        parts = [[len(chains) + i for i in part] for part in _group_parts(contours, mask)]
        chains.extend(contours)
        # -1 undoes the padding, +0.5 moves pixel centres (contour space) to ImageJ corners
        outlines.append((index + 1, (box[0].start - 0.5, box[1].start - 0.5), parts))
    rings = _simplify_rings(chains, tol)  # one vectorised pass over all regions
    regions = []
    for value, origin, parts in outlines:

        def level0(i, origin=origin):
            return _to_level0(rings[i], origin, scale, offset)

        polygons = [(level0(ext), [level0(h) for h in holes]) for ext, *holes in parts]
        regions.append(_region(value, properties, polygons))
    return regions


def _field(mask: np.ndarray, margins: np.ndarray, box: tuple[slice, slice]) -> np.ndarray:
    """The padded mask of a region as a field whose zero crossings are where the margins of the
    pixels in and out of it balance: + margin inside, - margin outside. A margin not known takes
    the largest beside it (as the finer levels' rule counts it the largest of the four)."""
    (h, w), weights = margins.shape, np.zeros(mask.shape, np.float64)
    y0, x0 = box[0].start - 1, box[1].start - 1  # the padding's row and column in the image
    ys, xs = slice(max(y0, 0), min(box[0].stop + 1, h)), slice(max(x0, 0), min(box[1].stop + 1, w))
    weights[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0] = margins[ys, xs]
    if not weights.any():
        return mask - 0.5  # crossings at midpoints, as the mask's at 0.5
    unknown = weights == 0
    weights[unknown] = ndimage.maximum_filter(weights, 3)[unknown]
    weights[weights == 0] = weights.max()
    return np.where(mask > 0, weights, -weights)


def _region(value: int, properties: dict[int, dict], polygons: list[Part]) -> Region:
    props = label_properties(properties, value)
    return Region(
        value=value,
        name=region_name(props["section"], props["name"], props["instance"]),
        class_index=props["class"],
        class_name=props["name"],
        section=props["section"],
        color=props["color"],
        score=props["score"],
        polygons=polygons,
    )


def _group_parts(contours: list[np.ndarray], mask: np.ndarray) -> list[list[int]]:
    """Contour indices as [exterior, *holes] per 4-connected component of a padded mask."""
    # skimage winds foreground islands clockwise in (row, col): negative area = exterior
    exterior = [_signed_area(c) < 0 for c in contours]
    if sum(exterior) == 1:
        return [sorted(range(len(contours)), key=lambda i: not exterior[i])]
    components, _ = ndimage.label(mask)
    parts: dict[int, list[int]] = {}
    for i in sorted(range(len(contours)), key=lambda i: not exterior[i]):
        parts.setdefault(_component(contours[i], mask, components), []).append(i)
    return list(parts.values())


def _component(contour: np.ndarray, mask: np.ndarray, components: np.ndarray) -> int:
    """The component a contour bounds: one of the two pixels its first vertex lies between is foreground."""
    r, c = contour[0]
    lo = int(np.floor(r)), int(np.floor(c))
    hi = int(np.ceil(r)), int(np.ceil(c))
    return int(components[lo] if mask[lo] else components[hi])


def _simplify_rings(chains: list[np.ndarray], tolerance: float) -> list[np.ndarray]:
    """Closed chains (last vertex = first) -> open rings simplified by Douglas-Peucker;
    a ring that would fall below 3 vertices keeps all of them."""
    if not chains:
        return []
    lengths = np.array([len(c) for c in chains])
    starts = np.cumsum(lengths) - lengths
    ends = starts + lengths - 1
    points = np.concatenate(chains)
    ring_of = np.repeat(np.arange(len(chains)), lengths)
    keep = _douglas_peucker(points, starts, ends, ring_of, tolerance) if tolerance > 0 else np.ones(len(points), bool)
    collapsed = np.add.reduceat(keep, starts) - 1 < 3
    keep |= collapsed[ring_of]
    keep[ends] = False
    return np.split(points[keep], np.cumsum(np.add.reduceat(keep, starts))[:-1])


def _douglas_peucker(points, starts, ends, ring_of, tolerance: float) -> np.ndarray:
    """Douglas-Peucker on many concatenated closed chains at once.

    Instead of recursing per chain (skimage.measure.approximate_polygon, which takes
    milliseconds per ring), every round splits every unfinished segment of every
    chain at its farthest vertex beyond ``tolerance``; rounds = recursion depth and
    only vertices of segments split in the last round are looked at again. A closed
    chain is first split at the vertex farthest from its start, as skimage does.
    """
    keep = np.zeros(len(points), bool)
    keep[starts] = keep[ends] = True
    keep[_argmax_by_group(np.hypot(*(points - points[starts][ring_of]).T), ring_of)] = True
    active = np.flatnonzero(~keep)
    while active.size:
        kept = np.flatnonzero(keep)
        segment = np.searchsorted(kept, active) - 1  # chain ends are kept: segment + 1 exists
        dist = _segment_distance(points[active], points[kept[segment]], points[kept[segment + 1]])
        far = np.flatnonzero(dist > tolerance)
        keep[active[far[_argmax_by_group(dist[far], segment[far])]]] = True
        split = np.zeros(len(kept), bool)
        split[segment[far]] = True
        active = active[split[segment] & ~keep[active]]
    return keep


def _argmax_by_group(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Index of the largest value of each run of equal, sorted group ids."""
    order = np.lexsort((-values, groups))
    sorted_groups = groups[order]
    first = np.ones(len(order), bool)
    first[1:] = sorted_groups[1:] != sorted_groups[:-1]
    return order[first]


def _segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance of each point p to the segment a-b (to a when the segment is a point)."""
    ab, ap = b - a, p - a
    length2 = (ab**2).sum(axis=1)
    t = np.clip((ap * ab).sum(axis=1) / np.where(length2 > 0, length2, 1.0), 0.0, 1.0)
    return np.hypot(*(ap - t[:, None] * ab).T)


def _signed_area(ring: np.ndarray) -> float:
    """Shoelace area of a ring, open or closed (positive = counter-clockwise in its own axes)."""
    a, b = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(a[:-1], b[1:]) - np.dot(a[1:], b[:-1]) + a[-1] * b[0] - a[0] * b[-1])


def _to_level0(ring: np.ndarray, origin, scale, offset) -> np.ndarray:
    """(row, col) contour in a crop -> (x, y) level-0 pixel corners."""
    (r0, c0), (sy, sx), (oy, ox) = origin, scale, offset
    return np.column_stack(((ring[:, 1] + c0) * sx + ox, (ring[:, 0] + r0) * sy + oy))


def polygon_area(polygons: list[Part]) -> float:
    """Area of a region's parts in level-0 pixels (exteriors minus holes)."""
    return sum(_signed_area(ext) + sum(_signed_area(h) for h in holes) for ext, holes in polygons)
