"""Regions as files users open: ImageJ ROIs (RoiSet.zip, read and written) and GeoJSON for QuPath.

The regions come from outlines.py, in level-0 pixels with ImageJ's convention (integer coordinates
are pixel corners). A RoiSet.zip read here comes from anywhere: its members are size-checked
before they are decoded. Files are written to a temporary name and renamed into place, so a
failed export never leaves half a file.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import struct
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path, PureWindowsPath

import numpy as np
from roifile import ROI_OPTIONS, ROI_TYPE, ImagejRoi

from .outlines import Region, polygon_area

"""Douglas-Peucker tolerance in level-L pixels: removes the staircase but, unlike 0.5,
keeps the half-pixel corner cuts, so a rectangle stays a rectangle."""
MAX_MEMBER_BYTES = 32 * 2**20
"""Largest ROI read_roiset accepts (about 2.8 million float vertices)."""
MAX_TOTAL_BYTES = 2**30
MAX_MEMBERS = 100_000
"""More ROIs than a RoiSet plausibly holds: the zip is refused before its directory is walked further."""
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed time stamps: a rerun writes the same bytes


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
        left=int(left),
        top=int(top),
        right=int(right),
        bottom=int(bottom),
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
        left=int(left),
        top=int(top),
        right=int(right),
        bottom=int(bottom),
        shape_roi_size=len(coords),
        multi_coordinates=coords,
    )


def write_roiset(
    path: str | os.PathLike, regions: list[Region], *, position: int | None = None, groups: bool = False
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
    stem = "".join("_" if ch in "/\\:" else ch for ch in name).lstrip(".") or "roi"
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
                raise ValueError(
                    f"{path}: {len(infos)} members, over the limit of {max_members} (a zip bomb or not a RoiSet); "
                    "save the ROIs again from the ROI Manager"
                )
            _check_members(path, infos, max_member_bytes, max_total_bytes)
            return [_read_member(path, zf, info, max_member_bytes) for info in infos]
    except zipfile.BadZipFile as exc:
        raise ValueError(f"{path}: not a readable zip file ({exc}); export the ROIs again") from None


def _check_members(path, infos, max_member_bytes: int, max_total_bytes: int) -> None:
    for info in infos:
        name = info.filename
        member = PureWindowsPath(name)  # splits on both / and \
        if member.drive or member.root or ".." in member.parts:
            raise ValueError(
                f"{path}: unsafe member name {name!r} (a path out of the zip); save the ROIs again from the ROI Manager"
            )
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
        raise ValueError(
            f"{path}: member {info.filename!r} is not a valid ImageJ ROI ({exc}); save the ROIs again from the ROI "
            "Manager"
        ) from None


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
