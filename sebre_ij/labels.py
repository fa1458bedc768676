"""Label values, and finished label layers as readers see them.

A label value encodes a section and a class (value = section * class base + class, the class base a
power of ten above the class count: 305 is section 3, class 5), so a value can be computed from any
tile alone and every writer agrees on it. A layer is finished once its name is in the labels
group's list (layer.py writes it last); readers (exports, evaluation, training) open only those,
and refuse malformed image-label metadata before they start, not halfway through an export.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import zarr

from .errors import UserError
from .ngff import ome_attrs
from .slide import Slide, node, read_levels, read_multiscale

LABEL_DTYPE = np.uint32
# The model's class margins at the inference level (uint16; layer.py writes them): the finer levels
# are drawn from them (finer.py) and exports trace outlines on the same rule (outlines.py).
MARGIN = "margins"


def class_base(n_classes: int) -> int:
    """The class base of label values: the smallest power of ten above the largest class index.

    Notes
    -----
    Equals ``10 ** len(str(max(n_classes - 1, 1)))``: 10 for up to 10 classes, 100 for up to 100.
    """
    return 10 ** len(str(max(n_classes - 1, 1)))


def encode(sections: np.ndarray, classes: np.ndarray, class_base: int) -> np.ndarray:
    """Label values from per-pixel section and class numbers.

    Notes
    -----
    Equals ``sections * class_base + classes`` as LABEL_DTYPE, and 0 where either is 0 (background).
    """
    values = sections.astype(LABEL_DTYPE) * class_base + classes.astype(LABEL_DTYPE)
    return np.where((sections > 0) & (classes > 0), values, 0).astype(LABEL_DTYPE)


def label_axes(slide: Slide) -> str:
    """Labels carry the image's axes but the channel."""
    return slide.axes.replace("c", "")


@dataclass
class LabelInfo:
    """A finished label layer as readers see it."""

    name: str
    group: zarr.Group
    properties: dict[int, dict]
    colors: dict[int, tuple[int, int, int]]
    paths: list[str]


def open_labels(slide: Slide, name: str) -> LabelInfo:
    """The finished label layer `name` of a slide, its metadata checked.

    A UserError, saying what to do, for a layer that is unfinished (not in the labels list), absent,
    not a group, or whose multiscales or image-label metadata is malformed.
    """
    group = node(slide.url, slide.group, f"labels/{name}")
    if name not in slide.label_names():
        if group is not None:
            raise UserError(
                f"{slide.url}: label layer {name!r} is unfinished (its run was killed or is still "
                "running); run the same `sebre segment` command again to resume it, or pass --overwrite "
                "to start over"
            )
        have = ", ".join(slide.label_names()) or "none"
        raise UserError(
            f"{slide.url}: no finished label layer {name!r} (layers: {have}); run `sebre segment` or pass --labels NAME"
        )
    where = f"{slide.url}/labels/{name}"
    if not isinstance(group, zarr.Group):
        raise UserError(
            f"{where}: listed in labels/ but not a label layer group; remove it from the list or re-export it"
        )
    attrs = ome_attrs(group)
    levels = read_levels(where, group, read_multiscale(where, attrs), label_axes(slide))
    props, colors = _image_label(where, attrs)
    return LabelInfo(name, group, props, colors, [lv.path for lv in levels])


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _valid_property(p: dict) -> bool:
    return (
        _integer(p["label-value"])
        and all(_integer(p[k]) for k in ("class", "section", "instance") if p.get(k) is not None)
        and (p.get("score") is None or (isinstance(p["score"], (int, float)) and not isinstance(p["score"], bool)))
    )


def _valid_color(c: dict) -> bool:
    rgba = c.get("rgba")
    return (
        _integer(c["label-value"])
        and isinstance(rgba, list)
        and len(rgba) >= 3
        and all(_integer(v) and 0 <= v <= 255 for v in rgba[:3])
    )


def _image_label(where: str, attrs: dict) -> tuple[dict[int, dict], dict[int, tuple[int, int, int]]]:
    """Properties and colours by label value. Entries without a label value say nothing and are
    skipped; malformed ones are refused, so a layer from elsewhere fails here, not mid-export."""
    image_label = attrs.get("image-label", {})
    props = image_label.get("properties", []) if isinstance(image_label, dict) else None
    colors = image_label.get("colors", []) if isinstance(image_label, dict) else None
    if isinstance(props, list) and isinstance(colors, list):
        props = [p for p in props if isinstance(p, dict) and "label-value" in p]
        colors = [c for c in colors if isinstance(c, dict) and "label-value" in c]
        if all(map(_valid_property, props)) and all(map(_valid_color, colors)):
            return {p["label-value"]: dict(p) for p in props}, {c["label-value"]: tuple(c["rgba"][:3]) for c in colors}
    raise UserError(
        f"{where}: malformed image-label metadata (properties and colors: lists of objects with an integer "
        "label-value, integer class and section, RGB values 0-255); fix or re-export the label layer"
    )


def class_lut(info: LabelInfo, max_value: int) -> np.ndarray:
    """Lookup table label value -> class index, from the layer's properties ("class")."""
    lut = np.zeros(max_value + 1, np.int64)
    for value, p in info.properties.items():
        if value <= max_value and "class" in p:
            lut[value] = int(p["class"])
    return lut


def read_margins(info: LabelInfo, slide: Slide, level: int, z: int = 0) -> np.ndarray | None:
    """The model's class margins of plane `z` (uint16, 0 where none is known) when the layer keeps
    them at `level` (its inference level, `sebre segment` writes them there); else None."""
    if MARGIN not in info.group or dict(info.group.attrs).get("sebre", {}).get("level") != level:
        return None
    arr = info.group[MARGIN]
    if tuple(arr.shape[-2:]) != slide.yx_shape(level):
        return None
    index = tuple(z if a == "z" else 0 if a == "t" else slice(None) for a in label_axes(slide))
    return np.asarray(arr[index])


def read_plane(info: LabelInfo, slide: Slide, level: int, z: int = 0) -> np.ndarray:
    """The (Y, X) label values of plane `z` at `level` (time point 0)."""
    arr = info.group[info.paths[level]]
    index = tuple(z if a == "z" else 0 if a == "t" else slice(None) for a in label_axes(slide))
    return np.asarray(arr[index])
