"""Regions from a label image, as polygons, ImageJ ROIs (RoiSet.zip) and GeoJSON.

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

Rings are stored open (the first vertex is not repeated at the end); exteriors
have positive and holes negative signed (shoelace) area in (x, y).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import struct
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath
from typing import Iterator

import numpy as np
from roifile import ROI_OPTIONS, ROI_TYPE, ImagejRoi
from scipy import ndimage
from skimage.measure import find_contours

DEFAULT_TOLERANCE = 0.4
"""Douglas-Peucker tolerance in level-L pixels: removes the staircase but, unlike 0.5,
keeps the half-pixel corner cuts, so a rectangle stays a rectangle."""
MAX_MEMBER_BYTES = 32 * 2**20
"""Largest ROI read_roiset accepts (about 2.8 million float vertices)."""
MAX_TOTAL_BYTES = 2**30
MAX_MEMBERS = 100_000
"""More ROIs than a RoiSet plausibly holds: the zip is refused before its directory is walked further."""
DEFAULT_COLOR = (255, 255, 0)
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed time stamps: a rerun writes the same bytes

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
) -> list[Region]:
    """Outline every label value of a level-L label image in level-0 pixels.

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
        contours = find_contours(mask, 0.5)
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


# --- ImageJ RoiSet.zip -------------------------------------------------------------


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, suffix: str = ".part") -> Iterator[Path]:
    """Yield a temporary path beside ``path`` and rename it into place on success,
    so a crash never leaves a half-written file under the final name."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def roi_rings(region: Region) -> tuple[bool, list[np.ndarray]]:
    """(True, [exterior]) when one polygon ROI holds the region, else (False, every ring) for a
    composite ROI (ShapeRoi): holes and several parts."""
    parts = region.polygons
    if not parts:
        raise ValueError(f"region {region.name!r} has no polygon")
    if len(parts) == 1 and not parts[0][1]:
        return True, [parts[0][0]]
    return False, [ring for ext, holes in parts for ring in (ext, *holes)]


def roi_group(region: Region) -> int:
    """ImageJ groups are one byte: the class index, clamped."""
    return min(max(region.class_index, 0), 255)


def imagej_roi(region: Region, *, position: int | None = None, groups: bool = False) -> ImagejRoi:
    """One ImageJ ROI for a region: a float polygon, or a composite (ShapeRoi) for
    holes and several parts.

    ImageJ recolours a ROI with its group's colour when it reads a group > 0, so the
    region colour survives only with ``groups=False`` (the default); the class is
    always in the ROI's properties.
    """
    simple, rings = roi_rings(region)
    roi = _polygon_roi(rings[0]) if simple else _composite_roi(rings)
    roi.name = utf16_safe(region.name)
    roi.stroke_color = bytes((255, *region.color))
    roi.group = roi_group(region) if groups else 0
    roi.position = int(position or region.position or 0)
    roi.props = utf16_safe("".join(f"{key}: {value}\n" for key, value in roi_properties(region).items()))
    return roi


def utf16_safe(text: str) -> str:
    """Characters beyond the BMP become U+FFFD: roifile counts each as one UTF-16 unit where it takes
    two, which would cut the text short, shift what follows and leave the ROI unreadable."""
    return "".join(c if ord(c) <= 0xFFFF else "\ufffd" for c in text)


def roi_properties(region: Region) -> dict[str, str]:
    """Properties stored on each ImageJ ROI (Roi.getProperty): the class survives
    even where the 0-255 group cannot hold it."""
    props = {"class": str(region.class_index), "class_name": region.class_name, "section": str(region.section)}
    if region.score is not None:
        props["score"] = f"{region.score:.6g}"
    return props | {k: str(v) for k, v in region.extra.items()}


def _polygon_roi(ring: np.ndarray) -> ImagejRoi:
    """Sub-pixel polygon; ImageJ reads the float32 copy, so coordinates beyond the
    16-bit integer range stay exact (the integer copy may wrap and is ignored)."""
    xy = np.asarray(ring, dtype=np.float64)
    ints = np.round(xy).astype(np.int32)
    left, top = ints.min(axis=0)
    right, bottom = ints.max(axis=0) + 1
    return ImagejRoi(
        roitype=ROI_TYPE.POLYGON,
        options=ROI_OPTIONS.SUB_PIXEL_RESOLUTION,
        left=int(left), top=int(top), right=int(right), bottom=int(bottom),
        n_coordinates=len(xy),
        integer_coordinates=ints - (left, top),
        subpixel_coordinates=xy.astype(np.float32),
    )


def _composite_roi(rings: list[np.ndarray]) -> ImagejRoi:
    """Composite ROI: a java.awt path (MOVETO=0, LINETO=1, CLOSE=4) of float32
    absolute coordinates; ImageJ fills it with the even-odd rule."""
    path = []
    for ring in rings:
        ops = np.ones((len(ring), 1))
        ops[0] = 0
        path.append(np.hstack((ops, ring)).ravel())
        path.append([4.0])
    coords = np.concatenate(path).astype(np.float32)
    xy = np.concatenate(rings)
    left, top = np.floor(xy.min(axis=0)).astype(int)
    right, bottom = np.ceil(xy.max(axis=0)).astype(int)
    return ImagejRoi(
        roitype=ROI_TYPE.RECT,
        left=int(left), top=int(top), right=int(right), bottom=int(bottom),
        shape_roi_size=len(coords),
        multi_coordinates=coords,
    )


def write_roiset(
    path: str | os.PathLike,
    regions: list[Region],
    *,
    position: int | None = None,
    groups: bool = False,
) -> int:
    """Write one ImageJ ROI per region to a RoiSet.zip that Fiji's ROI Manager opens.

    ``position`` is ImageJ's 1-based stack position (None or 0: all planes);
    ``groups=True`` sets the ROI group to the class index (0-255, clamped), at
    the cost of ImageJ showing group colours instead of region colours.
    Returns the number of ROIs written.
    """
    used: set[str] = set()
    buffer = io.BytesIO()  # built in memory (seeks are free), then written once
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
        for region in regions:
            data = imagej_roi(region, position=position, groups=groups).tobytes()
            zf.writestr(zipfile.ZipInfo(_entry_name(region.name, used), _ZIP_EPOCH), data)
    with atomic_output(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())
    return len(regions)


def _entry_name(name: str, used: set[str]) -> str:
    """A unique, flat ``<name>.roi`` zip entry (no folders, no traversal)."""
    stem = "".join("_" if ch in '/\\:' else ch for ch in name).lstrip(".") or "roi"
    entry, k = f"{stem}.roi", 1
    while entry.lower() in used:
        k += 1
        entry = f"{stem}-{k}.roi"
    used.add(entry.lower())
    return entry


def read_roiset(
    path: str | os.PathLike,
    *,
    max_member_bytes: int = MAX_MEMBER_BYTES,
    max_total_bytes: int = MAX_TOTAL_BYTES,
    max_members: int = MAX_MEMBERS,
) -> list[ImagejRoi]:
    """Read a RoiSet.zip in memory, refusing what ImageJ would not have written.

    Members must be ``*.roi`` names without drives, roots or ``..``; their number and
    sizes are checked from the directory and again while decompressing, so a zip bomb
    raises ValueError instead of filling memory. Nothing is ever extracted to disk.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            infos = [i for i in zf.infolist() if not i.is_dir()]
            if len(infos) > max_members:
                raise ValueError(f"{path}: {len(infos)} members, over the limit of {max_members} (a zip bomb or not a RoiSet); "
                                 "save the ROIs again from the ROI Manager")
            _check_members(path, infos, max_member_bytes, max_total_bytes)
            return [_read_member(path, zf, info, max_member_bytes) for info in infos]
    except zipfile.BadZipFile as exc:
        raise ValueError(f"{path}: not a readable zip file ({exc}); export the ROIs again") from None


def _check_members(path, infos, max_member_bytes: int, max_total_bytes: int) -> None:
    for info in infos:
        name = info.filename
        member = PureWindowsPath(name)  # splits on both / and \
        if member.drive or member.root or ".." in member.parts:
            raise ValueError(f"{path}: unsafe member name {name!r} (a path out of the zip); save the ROIs again from the ROI Manager")
        if not name.lower().endswith(".roi"):
            raise ValueError(f"{path}: member {name!r} is not an ImageJ .roi file; remove it from the zip")
        if info.file_size > max_member_bytes:
            raise ValueError(_too_big(path, name, info.file_size, max_member_bytes))
    total = sum(i.file_size for i in infos)
    if total > max_total_bytes:
        raise ValueError(_too_big(path, "all members", total, max_total_bytes))


def _read_member(path, zf: zipfile.ZipFile, info: zipfile.ZipInfo, max_member_bytes: int) -> ImagejRoi:
    with zf.open(info) as fh:
        data = fh.read(max_member_bytes + 1)  # bounded, whatever the directory says
    if len(data) > max_member_bytes:
        raise ValueError(_too_big(path, info.filename, len(data), max_member_bytes))
    try:
        return ImagejRoi.frombytes(data)
    except (ValueError, TypeError, struct.error) as exc:
        raise ValueError(f"{path}: member {info.filename!r} is not a valid ImageJ ROI ({exc}); save the ROIs again from the ROI Manager") from None


def _too_big(path, name: str, size: int, limit: int) -> str:
    return (
        f"{path}: {name} would unpack to {size} bytes, over the {limit}-byte limit "
        "(a zip bomb or not a RoiSet); save the ROIs again from the ROI Manager"
    )


# --- QuPath GeoJSON ------------------------------------------------------------------


def write_geojson(path: str | os.PathLike, regions: list[Region], *, pixel_size_um: float | None = None) -> None:
    """Write a FeatureCollection that QuPath imports as classified annotations.

    Coordinates are level-0 pixels with closed rings; with ``pixel_size_um`` each
    feature also carries its area in µm² under ``measurements``.
    """
    collection = {"type": "FeatureCollection", "features": [_feature(r, pixel_size_um) for r in regions]}
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(collection, separators=(",", ":")))


def _feature(region: Region, pixel_size_um: float | None) -> dict:
    polygons = [[_closed(ext), *(_closed(h) for h in holes)] for ext, holes in region.polygons]
    if len(polygons) == 1:
        geometry = {"type": "Polygon", "coordinates": polygons[0]}
    else:
        geometry = {"type": "MultiPolygon", "coordinates": polygons}
    properties = {
        "objectType": "annotation",
        "name": region.name,
        "classification": {"name": region.class_name, "color": list(region.color)},
        "section": region.section,
        "class": region.class_index,
        "score": region.score,
    }
    if pixel_size_um is not None:
        properties["measurements"] = {"area_um2": polygon_area(region.polygons) * pixel_size_um**2}
    return {"type": "Feature", "geometry": geometry, "properties": properties}


def _closed(ring: np.ndarray) -> list[list[float]]:
    return np.round(np.vstack((ring, ring[:1])), 4).tolist()
