"""`sebre evaluate`: predicted regions against true ones, from label layers, label images or RoiSets.

Both sides are read into label planes (values, and each value's class, section and score), brought
onto one pixel grid, their classes matched by name, and scored with metrics.py: Dice and IoU per
region and per section, mask mAP, a confusion table, and outline pictures.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from .datasets import folder_layout, shared_sections
from .errors import UserError
from .exports import recorded_level, roi_level
from .labels import LabelInfo, class_base, class_lut, open_labels, read_plane
from .metrics import Instances, confusion, dice_iou, mask_ap, mean_ap
from .preview import write_comparison
from .readers import (
    SECTION_PREFIX,
    ClassTable,
    class_table_of,
    is_zarr,
    load_class_table,
    rasterise_rois,
    read_image,
    read_labels,
    roi_annotations,
)
from .slide import Slide, open_slide, pick_level
from .tiles import resample_nearest
from .tissue import to_unit


def class_plane(slide: Slide, name: str, level: int, z: int = 0) -> np.ndarray:
    info = open_labels(slide, name)
    values = read_plane(info, slide, level, z)
    return class_lut(info, int(values.max(initial=0)))[values]


def compare_layers(slide: Slide, pred: str, truth: str, class_names: list[str], level: int) -> dict[str, float]:
    """Dice per foreground class present in either layer, pooled over planes, plus their mean."""
    n = len(class_names)
    matrix = sum(
        confusion(
            np.minimum(class_plane(slide, pred, level, z), n - 1),
            np.minimum(class_plane(slide, truth, level, z), n - 1),
            n,
        )
        for z in range(slide.n_planes)
    )
    dice, _ = dice_iou(matrix)
    scores = {class_names[c]: round(float(dice[c]), 4) for c in range(1, n) if not np.isnan(dice[c])}
    scores["mean"] = round(float(np.mean(list(scores.values()))), 4) if scores else float("nan")
    return scores


IMAGE_SUFFIXES = (".png", ".tif", ".tiff")
MAX_EVAL_SIDE = 4096  # without a pixel size or a recorded inference level, read a layer no finer than this


@dataclass
class LabelPlane:
    """One image's labels: values, and each value's class (source's table), section and score."""

    name: str
    values: np.ndarray
    classes: dict[int, int]
    sections: dict[int, int] | None  # None: the source does not number sections
    scores: dict[int, float]
    image: np.ndarray | None = None  # (C, Y, X) in [0, 1], drawn under the outlines


@dataclass
class LabelSource:
    path: str
    planes: list[LabelPlane]
    table: ClassTable
    level0: list[tuple[int, int]]  # per plane, the full-resolution (Y, X) that ROI coordinates use


def split_layer_path(path: str, name: str | None) -> tuple[str, str | None]:
    """`slide.zarr/labels/NAME` -> (slide.zarr, NAME); otherwise the path and the given name."""
    head, sep, tail = str(path).rstrip("/").rpartition("/labels/")
    is_layer = sep and tail and "/" not in tail and not Path(path).is_file() and source_kind(head) == "zarr"
    return (head, tail) if is_layer else (str(path), name)


def open_layer(path: str, name: str | None) -> tuple[Slide, LabelInfo]:
    """The slide and its label layer `name` (or its only layer)."""
    slide = open_slide(path)
    if name is None:
        names = slide.label_names()
        if len(names) != 1:
            raise UserError(
                f"{path}: {len(names)} label layers ({', '.join(names) or 'none'}); name one with "
                "pred_labels=NAME or truth_labels=NAME, or give slide.zarr/labels/NAME"
            )
        name = names[0]
    return slide, open_labels(slide, name)


def recorded_pixel_size(slide: Slide, info: LabelInfo) -> float | None:
    """µm/px of the level `sebre segment` inferred this layer at, if it says."""
    level = recorded_level(slide, info)
    return None if level is None else slide.pixel_size(level)


def layer_source(slide: Slide, info: LabelInfo, pixel_size: float | None) -> LabelSource:
    """Every plane of a label layer at the level nearest `pixel_size` (else a bounded fine one)."""
    level = pick_level(slide, pixel_size) if pixel_size else roi_level(slide, info, MAX_EVAL_SIDE)
    props = info.properties
    numbered = any("section" in p for p in props.values())
    planes = []
    for z in range(slide.n_planes):
        name = Path(slide.url.rstrip("/")).stem + (f"_z{z}" if slide.n_planes > 1 else "")
        planes.append(
            LabelPlane(
                name,
                read_plane(info, slide, level, z),
                {v: int(p["class"]) for v, p in props.items() if "class" in p},
                {v: int(p.get("section", 0)) for v, p in props.items()} if numbered else None,
                {v: float(p["score"]) for v, p in props.items() if "score" in p},
                to_unit(np.asarray(slide.plane(level, z))),
            )
        )
    return LabelSource(slide.url, planes, class_table_of(info), [slide.yx_shape(0)] * slide.n_planes)


def image_source(path: Path, table: ClassTable | None) -> LabelSource:
    """Label images: one file, a folder of them, or a set folder (sections.json gives the classes).
    The section image, drawn under the outlines, is `../images/<stem>.*` when there is one."""
    if folder_layout(path) == "shared":
        index = shared_sections(path)
        files = [s.labels for s in index.sections]
        table = table or index.table
    elif path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    else:
        files = [path]
        beside = path.parent.parent / "sections.json"
        if table is None and path.parent.name == "labels" and beside.is_file():
            table = shared_sections(path.parent.parent).table
    if table is None:
        raise UserError(f"{path}: label images need their class table; pass classes=FILE.json (as in sections.json)")
    if not files:
        raise UserError(f"{path}: no label images (PNG or TIFF) here; give a label image or a folder of them")
    planes = []
    for f in files:
        values = read_labels(f, len(table.names))
        picture = next(iter(sorted(f.parent.parent.glob(f"images/{f.stem}.*"))), None)
        image = read_image(picture).pixels if picture is not None else None
        planes.append(
            LabelPlane(
                f.stem,
                values,
                {v: v for v in range(len(table.names))},
                None,
                {},
                image if image is not None and image.shape[1:] == values.shape else None,
            )
        )
    return LabelSource(str(path), planes, table, [p.values.shape for p in planes])


def roi_source(path: Path, frame: LabelSource) -> LabelSource:
    """A RoiSet.zip drawn on the other source's planes (ROI coordinates are their level-0 pixels);
    an `sN-` name prefix numbers the ROI's section, its stack position picks the plane."""
    annotations = roi_annotations(path)
    rois, table, classes = annotations.rois, annotations.table, annotations.classes
    numbers = [int(m[0][1:-1]) if (m := SECTION_PREFIX.match(r.name or "")) else 0 for r in rois]
    base = class_base(len(table.names))
    planes = []
    for z, (plane, level0) in enumerate(zip(frame.planes, frame.level0)):
        here = [i for i, r in enumerate(rois) if r.position in (0, z + 1)]
        shape = plane.values.shape
        scale = (shape[0] / level0[0], shape[1] / level0[1])
        cls = rasterise_rois([rois[i] for i in here], [classes[i] for i in here], shape, scale)
        sec = rasterise_rois([rois[i] for i in here], [numbers[i] for i in here], shape, scale)
        values = sec.astype(np.int64) * base + cls
        present = np.unique(values[cls > 0]).tolist()
        planes.append(
            LabelPlane(
                plane.name,
                values,
                {v: v % base for v in present},
                {v: v // base for v in present} if any(numbers) else None,
                {},
                plane.image,
            )
        )
    return LabelSource(str(path), planes, table, frame.level0)


def open_sources(
    pred: str,
    truth: str,
    pred_labels: str | None,
    truth_labels: str | None,
    classes: ClassTable | None,
    pixel_size: float | None,
) -> tuple[LabelSource, LabelSource]:
    """Both sides; ROIs last, on the other side's planes. Zarr layers share one pixel size: the
    one asked for, else the level the prediction (or truth) was inferred at."""
    specs = [split_layer_path(pred, pred_labels), split_layer_path(truth, truth_labels)]
    kinds = [source_kind(p) for p, _ in specs]
    if kinds == ["roi", "roi"]:
        raise UserError(
            f"{pred} and {truth}: two RoiSets give no image frame; compare one with a label layer or label image"
        )
    layers = {i: open_layer(*specs[i]) for i in (0, 1) if kinds[i] == "zarr"}
    pixel_size = pixel_size or next((s for s in (recorded_pixel_size(*layers[i]) for i in sorted(layers)) if s), None)
    sources: list[LabelSource | None] = [None, None]
    for i in (0, 1):
        if kinds[i] == "zarr":
            sources[i] = layer_source(*layers[i], pixel_size)
        elif kinds[i] == "image":
            sources[i] = image_source(Path(specs[i][0]), classes)
    for i in (0, 1):
        if kinds[i] == "roi":
            sources[i] = roi_source(Path(specs[i][0]), sources[1 - i])
    return sources[0], sources[1]


def source_kind(path: str) -> str:
    """'roi' (RoiSet.zip), 'image' (label images, or a folder or set of them) or 'zarr'."""
    if path.lower().endswith(".zip"):
        return "roi"
    p = Path(path)
    if not is_zarr(path) or folder_layout(p):
        return "image"
    plain_folder = p.is_dir() and not path.rstrip("/").endswith(".zarr")
    return "image" if plain_folder and any(f.suffix.lower() in IMAGE_SUFFIXES for f in p.iterdir()) else "zarr"


def common_classes(truth: ClassTable, pred: ClassTable) -> ClassTable:
    """The truth's classes, then the prediction's others: the two sides meet by class name."""
    names, colors = list(truth.names), list(truth.colors)
    for name, color in zip(pred.names, pred.colors):
        if name not in names:
            names.append(name)
            colors.append(color)
    return ClassTable(names, colors)


def pair_planes(pred: LabelSource, truth: LabelSource) -> list[tuple[LabelPlane, LabelPlane]]:
    """Planes of the same name, else in order when both sides have as many."""
    by_name = {p.name: p for p in pred.planes}
    named = [(by_name[t.name], t) for t in truth.planes if t.name in by_name]
    if named:
        return named
    if len(pred.planes) == len(truth.planes):
        return list(zip(pred.planes, truth.planes))
    raise UserError(
        f"{pred.path}: {len(pred.planes)} planes/sections named unlike the {len(truth.planes)} of {truth.path}; "
        "give label images named as the truth's (same file stems)"
    )


def _lut(mapping: dict[int, float], values: np.ndarray, default: float = 0) -> np.ndarray:
    """Per pixel, `mapping` of its value (`default` for values not in it)."""
    keys, inverse = np.unique(values, return_inverse=True)
    return np.array([mapping.get(int(k), default) for k in keys])[inverse].reshape(values.shape)


def _to_grid(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return array if array.shape[-2:] == shape else resample_nearest(array, array.shape, 0, shape[0], 0, shape[1], shape)


def on_one_grid(pred: LabelPlane, truth: LabelPlane, source: str) -> tuple[tuple[int, int], np.ndarray, np.ndarray]:
    """The coarser of the two shapes, and both planes' values on it (nearest neighbour)."""
    (ph, pw), (th, tw) = pred.values.shape, truth.values.shape
    if abs(ph * tw - th * pw) > 0.02 * th * pw:
        raise UserError(
            f"{source}: {truth.name} is {ph} x {pw} px predicted but {th} x {tw} px true, not the same "
            "field of view; compare labels of the same image"
        )
    shape = min((ph, pw), (th, tw), key=lambda s: s[0] * s[1])
    return shape, _to_grid(pred.values, shape), _to_grid(truth.values, shape)


def section_map(truth: LabelPlane, t_values: np.ndarray, pred: LabelPlane, p_values: np.ndarray) -> np.ndarray:
    """Per pixel of either side's regions, its section, so that both sides' instances split alike:
    each connected piece takes the section most of its pixels have in the truth's numbering, else
    the prediction's; a piece with no numbered pixel (tissue the prediction missed) is a section of
    its own. All regions are section 1 when neither side numbers sections; background is 0."""
    foreground = (t_values > 0) | (p_values > 0)
    plane, values = (truth, t_values) if truth.sections else (pred, p_values)
    if not plane.sections:
        return foreground.astype(np.int64)
    sections = _lut(plane.sections, values).astype(np.int64)
    pieces, n = ndi.label(foreground, structure=np.ones((3, 3)))
    m = int(sections.max()) + 1
    votes = np.bincount((pieces * m + sections).ravel(), minlength=(n + 1) * m).reshape(n + 1, m)
    votes[:, 0] = 0
    section_of = votes.argmax(axis=1)
    orphans = np.flatnonzero(votes[1:].max(axis=1) == 0) + 1
    section_of[orphans] = m + np.arange(len(orphans))
    section_of[0] = 0
    return section_of[pieces]


def instances(classes: np.ndarray, sections: np.ndarray, scores: np.ndarray, base: int) -> Instances:
    """One instance per class per section; its score is the pixel mean of the region scores."""
    ids = np.where(classes > 0, sections * base + classes, 0)
    present, inverse = np.unique(ids, return_inverse=True)
    mean = np.bincount(inverse.ravel(), weights=scores.ravel()) / np.bincount(inverse.ravel())
    return Instances(
        ids, {int(v): int(v % base) for v in present if v}, {int(v): float(m) for v, m in zip(present, mean) if v}
    )


def _region_rows(section: str, matrix: np.ndarray, names: list[str]) -> list[dict]:
    """Dice, IoU and pixel counts of each class present on either side."""
    dice, iou = dice_iou(matrix)
    truth_px, pred_px = matrix.sum(axis=1), matrix.sum(axis=0)
    return [
        {
            "section": section,
            "region": names[c],
            "dice": _num(dice[c]),
            "iou": _num(iou[c]),
            "truth_px": int(truth_px[c]),
            "pred_px": int(pred_px[c]),
        }
        for c in range(1, len(names))
        if truth_px[c] or pred_px[c]
    ]


def _num(value: float) -> float | None:
    """Rounded, and None for NaN (JSON has no NaN)."""
    return None if np.isnan(value) else round(float(value), 4)


def _file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def evaluate(
    pred: str,
    truth: str,
    out: str | Path | None = None,
    *,
    pred_labels: str | None = None,
    truth_labels: str | None = None,
    classes: str | Path | None = None,
    pixel_size: float | None = None,
) -> dict:
    """Score predicted regions against true ones (label layers, label images or RoiSets, in any
    pairing): Dice and IoU per region and per section, mask mAP, the confusion table. With `out`,
    also writes metrics.json, metrics.csv, confusion.csv and one outline PNG per section."""
    p_src, t_src = open_sources(pred, truth, pred_labels, truth_labels, load_class_table(classes), pixel_size)
    table = common_classes(t_src.table, p_src.table)
    n, base = len(table.names), class_base(len(table.names))
    to_common = {src.path: np.array([table.names.index(name) for name in src.table.names]) for src in (p_src, t_src)}
    total, sections_rows, pairs, pictures = np.zeros((n, n), np.int64), [], [], []
    for p_plane, t_plane in pair_planes(p_src, t_src):
        shape, p_values, t_values = on_one_grid(p_plane, t_plane, p_src.path)
        pc, tc = (
            to_common[src.path][np.minimum(_lut(plane.classes, v).astype(int), len(src.table.names) - 1)]
            for src, plane, v in ((p_src, p_plane, p_values), (t_src, t_plane, t_values))
        )
        sections = section_map(t_plane, t_values, p_plane, p_values)
        pairs.append(
            (
                instances(pc, sections, _lut(p_plane.scores, p_values, 1.0), base),
                instances(tc, sections, np.ones(shape), base),
            )
        )
        total += confusion(pc, tc, n)
        image = next((_to_grid(p.image, shape) for p in (t_plane, p_plane) if p.image is not None), None)
        numbers = np.unique(sections[(pc > 0) | (tc > 0)]).tolist()
        for s in numbers:
            inside = sections == s
            name = t_plane.name if len(numbers) == 1 else f"{t_plane.name}_s{s}"
            sections_rows += _region_rows(name, confusion(pc[inside], tc[inside], n), table.names)
            pictures.append((name, inside & ((pc > 0) | (tc > 0)), image, tc, pc))
    ap = mask_ap(pairs, n)
    regions = _region_rows("all", total, table.names)
    for row in regions:
        c = table.names.index(row["region"])
        row.update({"ap50": _num(ap[c, 0]), "ap": _num(np.nanmean(ap[c])) if not np.isnan(ap[c, 0]) else None})
    scored = [r for r in regions if r["truth_px"]]
    report = {
        "pred": str(pred),
        "truth": str(truth),
        "classes": table.names,
        "regions": regions,
        "mean_dice": _num(np.mean([r["dice"] for r in scored])) if scored else None,
        "mean_iou": _num(np.mean([r["iou"] for r in scored])) if scored else None,
        **{k: _num(v) for k, v in mean_ap(ap).items()},
        "sections": sections_rows,
        "confusion": total.tolist(),
    }
    if out is not None:
        write_report(Path(out), report, pictures, table)
    return report


def write_report(out: Path, report: dict, pictures: list, table: ClassTable) -> None:
    """metrics.json, metrics.csv (per section and pooled), confusion.csv, and the outline PNGs."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(report, indent=1))
    fields = ["section", "region", "dice", "iou", "ap50", "ap", "truth_px", "pred_px"]
    with open(out / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fields, restval="")
        writer.writeheader()
        writer.writerows(report["sections"] + report["regions"])
    with open(out / "confusion.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["truth \\ prediction", *table.names])
        writer.writerows([name, *row] for name, row in zip(table.names, report["confusion"]))
    colors = dict(enumerate(table.colors))
    for name, where, image, truth, pred in pictures:
        write_comparison(out / f"{_file_name(name)}.png", image, truth, pred, where, colors, name)
