"""Open an OME-Zarr slide (NGFF 0.4 on zarr v2, 0.5 on zarr v3; local path or fsspec URL).

Everything downstream sees a `Slide`: its levels with shapes and µm/px, its axes, its channel
names, and lazy (Dask) planes of shape (C, Y, X) whatever the stored axes were.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr

from .errors import UserError
from .ngff import VERSIONS, NgffFormat, ngff_format, ome_attrs
from .pixels import Pixels, is_remote, is_transient

SUPPORTED_AXES = ("yx", "cyx", "zyx", "czyx", "tczyx")
# µm per unit of every length NGFF names for a space axis, and the spellings other writers use
LENGTH_UM = {
    "yoctometer": 1e-18,
    "zeptometer": 1e-15,
    "attometer": 1e-12,
    "femtometer": 1e-9,
    "picometer": 1e-6,
    "angstrom": 1e-4,
    "nanometer": 1e-3,
    "micrometer": 1.0,
    "millimeter": 1e3,
    "centimeter": 1e4,
    "decimeter": 1e5,
    "meter": 1e6,
    "hectometer": 1e8,
    "kilometer": 1e9,
    "megameter": 1e12,
    "gigameter": 1e15,
    "terameter": 1e18,
    "petameter": 1e21,
    "exameter": 1e24,
    "parsec": 3.0856775814913673e22,
    "zettameter": 1e27,
    "yottameter": 1e30,
    "inch": 25400.0,
    "foot": 304800.0,
    "yard": 914400.0,
    "mile": 1609344000.0,
    "nm": 1e-3,
    "um": 1.0,
    "µm": 1.0,
    "μm": 1.0,
    "micron": 1.0,
    "microns": 1.0,
    "mm": 1e3,
    "cm": 1e4,
    "m": 1e6,
}


@dataclass(frozen=True)
class Level:
    path: str
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    scale: tuple[float, ...]  # per axis, in the axis unit (µm for y and x)
    dtype: str
    transforms: tuple = ()  # the level's coordinateTransformations as stored (label layers copy them)


@dataclass
class Slide:
    url: str
    group: zarr.Group
    version: str
    axes: str
    levels: list[Level]
    channels: list[str]
    name: str = ""
    um_per_unit: float = 1.0  # µm per stored scale unit: the x axis's unit, or what pixel_size= says
    units: dict[str, str] = field(default_factory=dict)  # the space axes' units as stored (labels copy them)

    @property
    def zarr_format(self) -> int:
        return self.group.metadata.zarr_format

    @property
    def ngff(self) -> NgffFormat:
        """The format object of the slide's NGFF version: how its store is written (ngff.py)."""
        return ngff_format(self.version)

    def pixel_size(self, level: int) -> float:
        """µm per pixel along x at `level` (slides have square pixels in practice)."""
        return self.levels[level].scale[self.axes.index("x")] * self.um_per_unit

    def yx_shape(self, level: int) -> tuple[int, int]:
        shape = self.levels[level].shape
        return shape[self.axes.index("y")], shape[self.axes.index("x")]

    @property
    def n_planes(self) -> int:
        return self.levels[0].shape[self.axes.index("z")] if "z" in self.axes else 1

    def array(self, level: int) -> zarr.Array:
        return self.group[self.levels[level].path]

    def pixels(self, level: int) -> Pixels:
        """The level's array for reading pixels: bad chunks and non-finite values become a UserError."""
        return Pixels(self.url, self.levels[level].path, self.array(level))

    def plane(self, level: int, z: int = 0, ys: slice = slice(None), xs: slice = slice(None)) -> np.ndarray:
        """(C, Y, X) pixels of one plane, or of a window of it (`ys`, `xs` may step, to read a level
        far larger than memory at a stride): t (always 1) dropped, z selected, c added when absent."""
        index = tuple(
            z if a == "z" else 0 if a == "t" else ys if a == "y" else xs if a == "x" else slice(None) for a in self.axes
        )
        data = self.pixels(level)[index]
        return data if "c" in self.axes else data[None]

    def label_names(self) -> list[str]:
        labels = node(self.url, self.group, "labels")
        if not isinstance(labels, zarr.Group):
            return []
        names = ome_attrs(labels).get("labels", [])
        return [n for n in names if isinstance(n, str)] if isinstance(names, list) else []


def node(url: str, group: zarr.Group, path: str) -> zarr.Group | zarr.Array | None:
    """A member of `group`, None when absent; damaged metadata is a UserError (zarr raises many types)."""
    try:
        return group[path]
    except KeyError:
        return None
    except Exception as exc:
        raise UserError(
            f"{url}/{path}: damaged zarr metadata ({type(exc).__name__}: {exc}); re-export the slide"
        ) from exc


def _open_group(url: str) -> zarr.Group:
    if "://" not in url and not Path(url).exists():
        raise UserError(f"{url}: no such file or directory; pass the path of an OME-Zarr store (.zarr folder)")
    try:
        node = zarr.open(url, mode="r")
    except Exception as exc:  # zarr raises many types for "not a store"
        if is_remote(url) and is_transient(exc):
            raise UserError(
                f"{url}: the store does not answer ({type(exc).__name__}: {exc}); check the connection to it and "
                "the address, then run again"
            ) from exc
        raise UserError(
            f"{url}: not a zarr store ({type(exc).__name__}: {exc}); pass an OME-Zarr image (convert with "
            "bioformats2raw)"
        ) from exc
    if not isinstance(node, zarr.Group):
        raise UserError(f"{url}: is a single zarr array, not an OME-Zarr image group; pass the image's root folder")
    return node


def read_multiscale(url: str, attrs: dict) -> dict:
    """The first multiscales entry of a group's NGFF metadata `attrs` (an image's or a label layer's);
    a UserError naming `url` when there is none."""
    ms = attrs.get("multiscales")
    if not ms or not isinstance(ms, list) or not isinstance(ms[0], dict):
        raise UserError(
            f"{url}: zarr group without OME-NGFF 'multiscales' metadata; pass the image group (the folder with "
            ".zattrs/zarr.json naming its levels)"
        )
    return ms[0]


def _version(url: str, attrs: dict, ms: dict) -> str:
    version = str(attrs.get("version") or ms.get("version") or "")
    if version not in VERSIONS:
        raise UserError(
            f"{url}: OME-NGFF version {version or 'unknown'!r} is not supported; convert the slide to NGFF 0.4 or 0.5 "
            "(ome-zarr-py, bioformats2raw)"
        )
    return version


def _axes(url: str, ms: dict) -> str:
    raw = ms.get("axes")
    names = [a.get("name") if isinstance(a, dict) else a for a in raw] if isinstance(raw, list) else []
    axes = "".join(names) if all(isinstance(n, str) and len(n) == 1 for n in names) else repr(names)
    if axes not in SUPPORTED_AXES:
        raise UserError(
            f"{url}: axes {axes or 'missing'!r} are not supported; expected one of {', '.join(SUPPORTED_AXES)}"
        )
    return axes


def _units(url: str, ms: dict) -> dict[str, str]:
    """The stored unit of each space axis that names one."""
    found = {}
    for axis in ms.get("axes", []):
        if isinstance(axis, dict) and axis.get("name") in ("z", "y", "x") and isinstance(axis.get("unit"), str):
            found[axis["name"]] = axis["unit"]
    return found


def _um_per_unit(url: str, units: dict[str, str]) -> float:
    """µm per unit of the x axis (micrometres when it names none, as most writers mean)."""
    unit = units.get("x")
    if unit is None:
        return 1.0
    if unit.strip().lower() not in LENGTH_UM and unit.strip() not in LENGTH_UM:
        raise UserError(
            f"{url}: axis x has unit {unit!r}, not a length NGFF names (micrometer, nanometer, millimeter, "
            "...); fix the metadata, or pass pixel_size=UM (µm per pixel of level 0)"
        )
    return LENGTH_UM.get(unit.strip(), LENGTH_UM.get(unit.strip().lower()))


def _stored_transforms(url: str, path: str, ds: dict) -> list[dict]:
    transforms = ds.get("coordinateTransformations", [])
    if not isinstance(transforms, list) or not all(isinstance(t, dict) for t in transforms):
        raise UserError(
            f"{url}: level {path!r} has malformed coordinateTransformations (not a list of objects); fix the metadata "
            "or re-export"
        )
    return transforms


def _scale(url: str, path: str, transforms: list[dict], ndim: int) -> tuple[float, ...]:
    scale = [1.0] * ndim
    for t in transforms:
        if t.get("type") == "scale":
            scale = t.get("scale")
    if (
        not isinstance(scale, list)
        or len(scale) != ndim
        or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0 for v in scale
        )
    ):
        raise UserError(
            f"{url}: level {path!r} has an invalid scale {scale!r} (one positive number per axis); fix "
            "coordinateTransformations"
        )
    return tuple(float(v) for v in scale)


def _dataset_path(url: str, ds) -> str:
    """A level's path: plain segments only, so metadata cannot point outside the store."""
    path = ds.get("path") if isinstance(ds, dict) else None
    if not isinstance(path, str) or any(part in ("", ".", "..") for part in path.split("/")):
        raise UserError(
            f"{url}: multiscales dataset {ds!r:.80} has no valid path (plain names like 's0'); fix the metadata or "
            "re-export"
        )
    return path


def _array(url: str, group: zarr.Group, path: str) -> zarr.Array:
    arr = node(url, group, path)
    if arr is None:
        raise UserError(f"{url}: level {path!r} named in the metadata is missing; re-export the slide")
    if not isinstance(arr, zarr.Array):
        raise UserError(f"{url}: level {path!r} is a group, not an array; fix the metadata or re-export")
    return arr


def read_levels(url: str, group: zarr.Group, ms: dict, axes: str) -> list[Level]:
    """The levels a multiscales entry `ms` names, checked against their arrays in `group`.

    Parameters
    ----------
    url : str
        Where `group` is, for the messages.
    group : zarr.Group
        The image or label layer group holding the levels' arrays.
    ms : dict
        Its multiscales entry (`read_multiscale`).
    axes : str
        The axes every level must have, such as "cyx" (a label layer's lack the image's "c").

    Returns
    -------
    list of Level
        In the entry's order; a UserError for a missing, empty or misshapen level, a bad path or
        scale, or a time axis longer than 1.
    """
    datasets = ms.get("datasets")
    if not isinstance(datasets, list) or not datasets:
        raise UserError(f"{url}: multiscales metadata lists no datasets; re-export the slide")
    levels = []
    for ds in datasets:
        path = _dataset_path(url, ds)
        arr = _array(url, group, path)
        if arr.ndim != len(axes):
            raise UserError(
                f"{url}: level {path!r} has {arr.ndim} dimensions but the axes are {axes!r}; fix the metadata or "
                "re-export"
            )
        if 0 in arr.shape:
            raise UserError(f"{url}: level {path!r} is empty (shape {arr.shape}); re-export the slide")
        transforms = _stored_transforms(url, path, ds)
        levels.append(
            Level(
                path,
                tuple(arr.shape),
                tuple(arr.chunks),
                _scale(url, path, transforms, arr.ndim),
                str(arr.dtype),
                tuple(transforms),
            )
        )
    if "t" in axes and levels[0].shape[0] != 1:
        raise UserError(
            f"{url}: time axis of length {levels[0].shape[0]}; sebre segments one time point: export a single one"
        )
    return levels


def _channels(attrs: dict, axes: str, levels: list[Level]) -> list[str]:
    n = levels[0].shape[axes.index("c")] if "c" in axes else 1
    omero = attrs.get("omero")
    channels = omero.get("channels") if isinstance(omero, dict) else None
    names = [c.get("label") for c in channels if isinstance(c, dict)] if isinstance(channels, list) else []
    if len(names) == n and all(isinstance(s, str) and s for s in names):
        return names
    return [f"C{i}" for i in range(n)]


def open_slide(url: str | Path, pixel_size: float | None = None) -> Slide:
    """Read the metadata of an OME-Zarr image; pixel data stays on disk until asked for.

    Scales are read in their axis's unit (nanometres to millimetres, as NGFF names them) and
    turned into µm. `pixel_size` (µm/px of level 0) replaces what the metadata says, for slides
    whose scale is missing or wrong (a TIFF converted without it says 1); the coarser levels keep
    their ratios."""
    url = str(url)
    group = _open_group(url)
    attrs = ome_attrs(group)
    ms = read_multiscale(url, attrs)
    version = _version(url, attrs, ms)
    axes = _axes(url, ms)
    levels = read_levels(url, group, ms, axes)
    name = ms.get("name")
    units = _units(url, ms)
    slide = Slide(
        url,
        group,
        version,
        axes,
        levels,
        _channels(attrs, axes, levels),
        name if isinstance(name, str) else "",
        1.0 if pixel_size is not None else _um_per_unit(url, units),
        units,
    )
    if pixel_size is not None:
        if not math.isfinite(pixel_size) or pixel_size <= 0:
            raise UserError(f"{url}: pixel_size={pixel_size} is not a positive number of µm per pixel")
        slide.um_per_unit = pixel_size / levels[0].scale[axes.index("x")]
    return slide


def pick_level(slide: Slide, pixel_size_um: float) -> int:
    """The level whose µm/px is nearest (in log scale) to the model's."""
    return min(range(len(slide.levels)), key=lambda i: abs(math.log(slide.pixel_size(i) / pixel_size_um)))


LEVEL_TOLERANCE = 0.10  # a level within 10 % of the model's µm/px is used as it is


def inference_level(slide: Slide, pixel_size_um: float) -> tuple[int, float]:
    """(source level, resampling factor) for a model working at `pixel_size_um`.

    The nearest level if it is within 10 % (factor 1); otherwise the nearest finer level, from
    which tiles are resampled by `factor` source pixels per model pixel (the coarsest level, upsampled, if
    every level is coarser than the model)."""
    nearest = pick_level(slide, pixel_size_um)
    if abs(slide.pixel_size(nearest) / pixel_size_um - 1) <= LEVEL_TOLERANCE:
        return nearest, 1.0
    finer = [i for i in range(len(slide.levels)) if slide.pixel_size(i) < pixel_size_um]
    source = max(finer, key=slide.pixel_size) if finer else nearest
    return source, pixel_size_um / slide.pixel_size(source)
