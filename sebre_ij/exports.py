"""Exports of a finished label layer: RoiSet.zip, GeoJSON, measurements CSV and a preview PNG.

`sebre segment` and `sebre rois` both come here, so a layer exports the same way however it was made.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import UserError
from .labels import LabelInfo, open_labels, read_margins, read_plane
from .measure import measure_regions, write_csv
from .outlines import Region, regions_from_labels
from .preview import write_preview
from .rois import write_geojson, write_roiset
from .slide import Slide
from .tiles import resample_nearest
from .tissue import coarse_sections

MAX_ROI_SIDE = 16384  # without a recorded inference level, trace on the finest level at most this big


@dataclass(frozen=True)
class Exports:
    """Which exports to write and where (None: not written), and how ROIs are made.

    ROIs are in level-`roi_level` pixels (0: full resolution); GeoJSON always in level 0, as
    QuPath wants. ROI groups carry the class index (`roi_groups`: ImageJ then shows its group
    colours; without, the model card's colours show, and the class stays in each ROI's properties).
    `roi_tolerance` simplifies outlines by that many pixels of the traced level (None: 0.4)."""

    rois: str | Path | None = None
    geojson: str | Path | None = None
    measurements: str | Path | None = None
    preview: str | Path | None = None
    roi_groups: bool = True
    roi_level: int = 0
    roi_tolerance: float | None = None


def recorded_level(slide: Slide, info: LabelInfo) -> int | None:
    """The level `sebre segment` inferred the layer at, when the layer says."""
    recorded = dict(info.group.attrs).get("sebre", {}).get("level")
    return recorded if isinstance(recorded, int) and 0 <= recorded < len(slide.levels) else None


def roi_level(slide: Slide, info: LabelInfo, max_side: int = MAX_ROI_SIDE) -> int:
    """The level regions were inferred at, else the finest level no longer than `max_side`."""
    recorded = recorded_level(slide, info)
    if recorded is not None:
        return recorded
    fits = [i for i in range(len(slide.levels)) if max(slide.yx_shape(i)) <= max_side]
    return fits[0] if fits else len(slide.levels) - 1


def region_properties(info: LabelInfo) -> dict[int, dict]:
    """Layer properties with colours folded in, as `rois` and `measure` take them."""
    return {v: {**p, "color": info.colors.get(v, (255, 255, 0))} for v, p in info.properties.items()}


def layer_regions(
    slide: Slide, info: LabelInfo, level: int, tolerance: float | None = None, frame: int = 0
) -> list[Region]:
    """Every plane's regions traced at `level`, in the pixel coordinates of level `frame` (0: full
    resolution), each at its 1-based stack position (0 for one plane). At the layer's inference
    level, outlines follow the model's class margins where the layer keeps them (sub-pixel). Off level 0, every ROI says
    which level and µm/px its coordinates are in."""
    props = region_properties(info)
    (hf, wf), (h, w) = slide.yx_shape(frame), slide.yx_shape(level)
    extra = {"coordinate_level": frame, "um_per_px": slide.pixel_size(frame)} if frame else {}
    regions = []
    for z in range(slide.n_planes):
        labels, margins = read_plane(info, slide, level, z), read_margins(info, slide, level, z)
        plane = regions_from_labels(labels, props, scale=(hf / h, wf / w), tolerance=tolerance, margins=margins)
        for r in plane:
            r.position = z + 1 if slide.n_planes > 1 else 0
            area = props.get(r.value, {}).get("area_um2")
            r.extra = {**({"area_um2": area} if area is not None else {}), **extra}
        regions += plane
    return regions


def push_regions(slide: Slide, labels: str, *, fiji: str | Path | None = None, groups: bool = True) -> int:
    """Add a label layer's regions to the ROI Manager of ImageJ started in this process (Fiji's
    gateway with `fiji`, else ij.jar); returns how many. Needs a display, checked first so a
    headless run fails with the way out instead of a Java error."""
    from . import imagej

    if not os.environ.get("DISPLAY") and sys.platform.startswith("linux"):
        raise UserError(
            f"{slide.url}: no display for the ImageJ ROI Manager (DISPLAY is unset); run under a virtual "
            "display (`xvfb-run -a sebre segment ...`), or write rois=RoiSet.zip and open it in Fiji instead"
        )
    try:
        imagej.start_imagej(fiji=fiji, headless=False)
        info = open_labels(slide, labels)
        return imagej.push_to_roi_manager(layer_regions(slide, info, roi_level(slide, info)), groups=groups)
    except RuntimeError as exc:  # a JVM already started headless, or no ImageJ classes
        raise UserError(
            f"{slide.url}: cannot reach the ImageJ ROI Manager ({str(exc).splitlines()[0]}); "
            "write rois=RoiSet.zip and open it in Fiji"
        ) from None


def check_roi_level(slide: Slide, level: int) -> None:
    if not 0 <= level < len(slide.levels):
        raise UserError(
            f"{slide.url}: roi_level={level} does not exist; the slide has levels 0 to {len(slide.levels) - 1}"
        )


def export_regions(slide: Slide, labels: str, exports: Exports, level: int | None = None) -> dict[str, str]:
    """Write whichever exports are asked for, traced at `level` (default: the level the layer was
    inferred at); returns {kind: path}."""
    check_roi_level(slide, exports.roi_level)
    info = open_labels(slide, labels)
    props = region_properties(info)
    level = roi_level(slide, info) if level is None else level
    written: dict[str, str] = {}
    planes = range(slide.n_planes)
    if exports.rois:
        write_roiset(
            exports.rois,
            layer_regions(slide, info, level, exports.roi_tolerance, exports.roi_level),
            groups=exports.roi_groups,
        )
        written["rois"] = str(exports.rois)
    if exports.geojson:
        write_geojson(
            exports.geojson, layer_regions(slide, info, level, exports.roi_tolerance), pixel_size_um=slide.pixel_size(0)
        )
        written["geojson"] = str(exports.geojson)
    if exports.measurements:
        rows = []
        for z in planes:
            rows += measure_regions(
                read_plane(info, slide, level, z),
                np.asarray(slide.plane(level, z)),
                props,
                slide.pixel_size(level),
                slide.channels,
            )
        write_csv(exports.measurements, rows)
        written["measurements"] = str(exports.measurements)
    if exports.preview:
        image, sections, small = coarse_sections(slide, 0)
        values = read_plane(info, slide, small, 0)  # the coarse image is strided on a slide without a pyramid
        values = resample_nearest(values, values.shape, 0, sections.shape[0], 0, sections.shape[1], sections.shape)
        write_preview(exports.preview, image, values, sections, info.colors)
        written["preview"] = str(exports.preview)
    return {k: str(Path(v)) for k, v in written.items()}
