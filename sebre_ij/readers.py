"""Readers of what users bring: section images, label images, class tables and ImageJ ROIs.

Training, evaluation and the section-folder datasets all read the same files, so they read them
here: an image as (C, H, W) float32 in [0, 1] with its channel names and µm/px, a label image as a
uint8 class map, a class table as names and colours, and a RoiSet.zip as ROIs with their classes,
rasterised by ImageJ's own fill rule. Files come from anywhere: sizes are checked before parsing
and every problem is one `UserError` line naming the file and the fix.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image
from roifile import ImagejRoi
from skimage.draw import polygon as fill_polygon

from .errors import UserError
from .rois import read_roiset
from .tissue import to_unit

SECTION_PREFIX = re.compile(r"^s\d+-")  # "s1-cortex" -> "cortex", as `sebre segment` names ROIs


IMAGEJ_DEFAULT_NAME = re.compile(r"^\d{4}(-\d{4,5}){1,2}$")  # what the ROI Manager calls an unnamed ROI


MICRON_UNITS = {"micron", "microns", "um", "µm", "\\u00B5m"}  # ImageJ may write µ escaped


PALETTE = [
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (170, 110, 40),
]


MAX_JSON_BYTES = 16 << 20


def read_json(path: str | Path):
    """A small JSON file, size-checked before it is parsed (the files come from anywhere)."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise UserError(
                f"{path}: larger than {MAX_JSON_BYTES >> 20} MiB; a class table or section list is far smaller"
            )
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: cannot read this JSON file ({exc}); fix or replace it") from None


@dataclass
class ClassTable:
    names: list[str]
    colors: list[tuple[int, int, int]]


def class_table_of(info) -> ClassTable:
    """Class names and colours from a label layer's properties (class index -> name)."""
    names, colors = {0: "background"}, {0: (0, 0, 0)}
    for value, p in info.properties.items():
        if "class" in p:
            cls = int(p["class"])
            names.setdefault(cls, str(p.get("name", f"class{cls}")))
            colors.setdefault(cls, info.colors.get(value, (255, 255, 255)))
    n = max(names) + 1
    return ClassTable([names.get(i, f"class{i}") for i in range(n)], [colors.get(i, (255, 255, 255)) for i in range(n)])


def class_table(data, source) -> ClassTable:
    """A ClassTable from `{"classes": [{"index": 1, "name": "cortex", "rgb": [r, g, b]}, ...]}`
    (sections.json's table); indices missing from the list get placeholder names."""
    entries = data.get("classes") if isinstance(data, dict) else None
    fix = 'give "classes": [{"index": 1, "name": "cortex", "rgb": [230, 90, 60]}, ...]'
    if not isinstance(entries, list) or not entries:
        raise UserError(f"{source}: no class table; {fix}")
    names, colors = {0: "background"}, {0: (0, 0, 0)}
    for e in entries:
        ok = (
            isinstance(e, dict)
            and isinstance(e.get("index"), int)
            and 0 <= e["index"] < 256
            and isinstance(e.get("name"), str)
        )
        rgb = e.get("rgb", PALETTE[0]) if ok else None
        if not ok or not (
            isinstance(rgb, list | tuple) and len(rgb) == 3 and all(isinstance(v, int) and 0 <= v < 256 for v in rgb)
        ):
            raise UserError(f"{source}: bad class entry {str(e)[:80]}; {fix}")
        names[e["index"]], colors[e["index"]] = e["name"], tuple(rgb)
    n = max(names) + 1
    return ClassTable(
        [names.get(i, f"class{i}") for i in range(n)], [colors.get(i, PALETTE[i % len(PALETTE)]) for i in range(n)]
    )


def load_class_table(path: str | Path | None) -> ClassTable | None:
    """The class table of a JSON file (--classes), or None."""
    return None if path is None else class_table(read_json(path), path)


@dataclass(frozen=True)
class ImageFile:
    """A section image read from a file: pixels (C, H, W) in [0, 1], channel names, µm/px if the file says."""

    pixels: np.ndarray
    channels: list[str]
    pixel_size_um: float | None


def _tiff_pixel_size(tif) -> float | None:
    """µm/px from an ImageJ TIFF (unit=micron) or a TIFF resolution in centimetres; None otherwise."""
    tags = tif.pages[0].tags
    if "XResolution" not in tags:
        return None
    num, den = tags["XResolution"].value
    if not num or not den:
        return None
    unit = (tif.imagej_metadata or {}).get("unit")
    if unit is not None:
        return den / num if str(unit) in MICRON_UNITS else None
    return 1e4 * den / num if "ResolutionUnit" in tags and tags["ResolutionUnit"].value == 3 else None


def read_image(path: str | Path) -> ImageFile:
    """A TIFF or PNG as (C, H, W) in [0, 1], its channel names and its µm/px when the file says."""
    path = Path(path)
    size = None
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            with tifffile.TiffFile(path) as tif:
                array, axes, size = tif.series[0].asarray(), tif.series[0].axes, _tiff_pixel_size(tif)
        else:
            with Image.open(path) as im:
                array = np.asarray(im.convert("RGB") if im.mode not in ("L", "I;16", "RGB") else im)
            axes = "YXS" if array.ndim == 3 else "YX"
    except (OSError, ValueError, tifffile.TiffFileError) as exc:
        raise UserError(f"{path}: cannot read this image ({exc}); give a TIFF or PNG of one section") from None
    if axes == "YXS":
        array = array[..., :3].transpose(2, 0, 1)
    elif axes == "YX":
        array = array[None]
    elif axes != "CYX":
        raise UserError(f"{path}: image axes {axes} are not YX, YXS (RGB) or CYX; save one plane as TIFF")
    names = ["R", "G", "B"] if axes == "YXS" else [f"c{i}" for i in range(array.shape[0])]
    return ImageFile(to_unit(array), names, size)


def is_zarr(path: str | Path) -> bool:
    return "://" in str(path) or str(path).rstrip("/").endswith(".zarr") or Path(path).is_dir()


def read_labels(path: str | Path, n_classes: int | None = None) -> np.ndarray:
    """A single-channel label image (PNG or TIFF) as a uint8 class map."""

    path = Path(path)
    try:
        with Image.open(path) as im:
            values = np.asarray(im)
    except (OSError, ValueError) as exc:
        raise UserError(
            f"{path}: cannot read this label image ({exc}); give a single-channel PNG or TIFF of class indices"
        ) from None
    if values.ndim != 2 or values.dtype.kind not in "ui" or values.min(initial=0) < 0 or values.max(initial=0) > 255:
        raise UserError(
            f"{path}: a label image must be one channel of class indices 0-255 (got {values.dtype} "
            f"{values.shape}); save the class map as an 8-bit grey PNG"
        )
    if n_classes is not None and values.max(initial=0) >= n_classes:
        raise UserError(
            f"{path}: class {int(values.max())} is not in the class table ({n_classes - 1} classes); "
            "add it to the table or fix the labels"
        )
    return values.astype(np.uint8)


def load_class_map(path: str | Path | None) -> dict[str, str] | None:
    """A JSON object mapping ROI names to class names (--class-map), or None."""
    if path is None:
        return None
    try:
        mapping = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(
            f'{path}: cannot read the class map ({exc}); give a JSON object like {{"s1-ctx": "cortex"}}'
        ) from None
    if not isinstance(mapping, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and v for k, v in mapping.items()
    ):
        raise UserError(f"{path}: the class map must be a JSON object of ROI name -> class name strings; fix the file")
    return mapping


def roi_class(name: str, class_map: dict[str, str] | None, source) -> str:
    """The class a ROI annotates: its class-map entry (full name, then without the `s<N>-` section
    prefix), else the name less that prefix. ImageJ's default numeric names carry no class."""
    bare = SECTION_PREFIX.sub("", name or "")
    if class_map is not None:
        if name in class_map or bare in class_map:
            return class_map.get(name, class_map.get(bare))
        raise UserError(
            f"{source}: ROI {name!r} is not in the class map; add it to the class map (class_map=FILE.json) or rename "
            "the ROI"
        )
    if not bare or bare == "background" or IMAGEJ_DEFAULT_NAME.match(bare):
        raise UserError(
            f"{source}: ROI {name!r} names no class; rename it in the ROI Manager to its region "
            "(e.g. cortex or s1-cortex) or map it with class_map=FILE.json"
        )
    return bare


def file_roi_rings(roi: ImagejRoi) -> list[np.ndarray]:
    """The ROI's outline rings as (N, 2) x, y arrays in pixel-corner coordinates; a composite
    (ShapeRoi) gives one ring per sub-path."""
    return [np.asarray(r, np.float64).reshape(-1, 2) for r in roi.coordinates(multi=True) if len(r) >= 3]


def rings_mask(rings: list[np.ndarray], shape: tuple[int, int], scale: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    """Pixels whose centre is inside the rings by the even-odd rule (ImageJ's fill of a composite
    ROI): the XOR of each ring's fill. `scale` (y, x) maps ROI pixels to `shape`'s pixels."""
    mask = np.zeros(shape, bool)
    for ring in rings:
        # a pixel's centre is at +0.5 in ImageJ's corner convention, at the integer in skimage's
        rr, cc = fill_polygon(ring[:, 1] * scale[0] - 0.5, ring[:, 0] * scale[1] - 0.5, shape)
        mask[rr, cc] ^= True
    return mask


def rasterise_rois(
    rois: list[ImagejRoi], classes: list[int], shape: tuple[int, int], scale: tuple[float, float] = (1.0, 1.0)
) -> np.ndarray:
    """A class map from ROIs (later ROIs paint over earlier ones, as in the ROI Manager's list)."""
    out = np.zeros(shape, np.uint8)
    for roi, cls in zip(rois, classes):
        out[rings_mask(file_roi_rings(roi), shape, scale)] = cls
    return out


def roi_class_table(rois: list[ImagejRoi], class_map: dict[str, str] | None, source) -> ClassTable:
    """Classes in a stable order (the class map's, else sorted names); colours from the first
    ROI of each class with a stroke colour, else a fixed palette."""
    found = [roi_class(r.name, class_map, source) for r in rois]
    names = list(dict.fromkeys(class_map.values())) if class_map is not None else sorted(set(found))
    colors = {}
    for roi, cls in zip(rois, found):
        argb = roi.stroke_color or b""
        if len(argb) == 4 and any(argb[1:]):
            colors.setdefault(cls, tuple(argb[1:]))
    return ClassTable(
        ["background", *names], [(0, 0, 0), *(colors.get(n, PALETTE[i % len(PALETTE)]) for i, n in enumerate(names))]
    )


@dataclass(frozen=True)
class RoiAnnotations:
    """The ROIs of a RoiSet.zip, their class table and each ROI's class index."""

    rois: list[ImagejRoi]
    table: ClassTable
    classes: list[int]


def roi_annotations(roiset_path: str | Path, class_map: dict[str, str] | None = None) -> RoiAnnotations:
    """The ROIs of a RoiSet.zip, their class table and each ROI's class index."""
    try:
        rois = read_roiset(roiset_path)
    except ValueError as exc:  # names the file, the problem and the fix
        raise UserError(str(exc)) from None
    except OSError as exc:
        raise UserError(
            f"{roiset_path}: cannot read the ROIs ({exc}); export them again from the ROI Manager"
        ) from None
    if not rois:
        raise UserError(f"{roiset_path}: no ROIs; outline the regions in the ROI Manager and save them again")
    table = roi_class_table(rois, class_map, roiset_path)
    return RoiAnnotations(rois, table, [table.names.index(roi_class(r.name, class_map, roiset_path)) for r in rois])
