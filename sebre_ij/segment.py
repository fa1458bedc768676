"""`sebre segment` as one function: slide + checkpoint in, label layer and exports out.

The order of the steps is the data flow of DESIGN.md: level from the card's µm/px, sections on a
coarse level, tiles over tissue, batched inference, core-of-tile stitching into the label layer,
the pyramid, then the metadata that marks the layer complete, then the exports.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from .cluster import ClusterSpec, TileJob, connect, run_tiles_on
from .errors import UserError
from .exports import check_roi_level, export_regions
from .infer import auto_batch_size, predict_tiles, read_tile
from .instances import number_instances
from .labels import class_base
from .layer import LabelLayer, check_name, check_writable, create_layer, finish_layer, hold_layer
from .pyramid import build_pyramid
from .model import ModelCard, load_checkpoint, pick_device
from .slide import ChunkCache, Slide, inference_level, open_slide
from .stitch import ChunkWriter, PlaneTiles, RegionStats, Result
from .tiles import Grid, Tile, tile_grid
from .tissue import SectionMap, tissue_sections, to_unit


@dataclass
class SegmentResult:
    slide: str
    labels: str
    level: int
    pixel_size_um: float
    sections: int
    tiles: int
    regions: list[dict]
    outputs: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    resumed_tiles: int = 0  # tiles a killed run had already written
    batch_size: int = 0  # tiles per model call (chosen when asked for "auto")


def check_channels(slide: Slide, card: ModelCard) -> None:
    if len(slide.channels) != len(card.channels):
        raise UserError(f"{slide.url}: {len(slide.channels)} channel(s) {slide.channels} but the model expects "
                        f"{len(card.channels)} {card.channels}; use a model trained on this kind of slide")


def glass_colour(image: np.ndarray, sections: np.ndarray) -> np.ndarray:
    """Per-channel median of the coarse level outside tissue: what padding past the edge looks like."""
    image = to_unit(image)
    outside = sections == 0
    if not outside.any():
        return np.median(image.reshape(image.shape[0], -1), axis=1)
    return np.median(image[:, outside], axis=1)


def region_table(stats: RegionStats, card: ModelCard, pixel_area_um2: float) -> list[dict]:
    """One row per label value: the properties written into the label layer."""
    base = class_base(len(card.classes))
    rows = []
    for value in sorted(stats.count):
        section, cls = divmod(value, base)
        rows.append({"label-value": value, "name": card.classes[cls], "class": cls, "section": section,
                     "score": round(stats.score[value] / stats.count[value], 4),
                     "area_um2": round(stats.count[value] * pixel_area_um2, 1)})
    return rows


def instance_table(found: list[tuple[int, int, int]], stats: RegionStats, card: ModelCard, pixel_area_um2: float) -> list[dict]:
    """One row per instance (id, region value, pixels): its region's class, section and mean score."""
    base = class_base(len(card.classes))
    rows, seen = [], {}
    for label, value, pixels in found:
        section, cls = divmod(value, base)
        seen[value] = seen.get(value, 0) + 1
        score = stats.score.get(value, 0.0) / max(stats.count.get(value, 1), 1)
        rows.append({"label-value": label, "name": card.classes[cls], "class": cls, "section": section,
                     "instance": seen[value], "score": round(score, 4), "area_um2": round(pixels * pixel_area_um2, 1)})
    return rows


def number_layer(layer: LabelLayer) -> list[tuple[int, int, int]]:
    """Instance mode's last step: number the pieces of every plane's regions, one plane after another.
    Returns (instance id, region value, pixels) per instance."""
    slide, found = layer.slide, []
    path = slide.levels[layer.level].path
    for z in range(slide.n_planes):
        start = len(found)

        def write(window, ids, z=z, start=start):
            layer.write(z, window, np.where(ids > 0, ids + start, 0).astype(ids.dtype), path)

        plane = number_instances(lambda window, z=z: layer.read(z, window), write, slide.yx_shape(layer.level),
                                 layer.chunks, layer.tiled_chunks)
        found += [(start + k, value, pixels) for k, (value, pixels) in enumerate(plane, 1)]
    return found


def _progress(enabled: bool) -> Progress:
    return Progress(TextColumn("[bold]segment"), BarColumn(), MofNCompleteColumn(), TextColumn("tiles"),
                    TextColumn("{task.fields[rate]:.1f}/s"), TimeRemainingColumn(), disable=not enabled, transient=True)


MODES = ("region", "instance")
TILE_GRID = "per-section, centred"  # in the run key: a run killed under another tiling is not resumed with this one
Predictor = Callable[[list[Tile], Callable[[Tile], np.ndarray]], Iterable[Result]]


Plane = tuple[np.ndarray, SectionMap]  # (glass colour per channel, sections) of one plane


def find_tissue(slide: Slide) -> list[Plane]:
    """Glass colour and sections of every plane; a slide without tissue is refused before anything is written."""
    planes = []
    for z in range(slide.n_planes):
        image, coarse, sections = tissue_sections(slide, z)
        planes.append((glass_colour(image, coarse), sections))
    if not any(sections.count for _, sections in planes):
        raise UserError(f"{slide.url}: no tissue found (the coarse level looks like blank glass); check that this is the "
                        "right slide and that its pixels are not all one value")
    return planes


def plane_tiles(layer: LabelLayer, z: int, grid: Grid, card: ModelCard, sections: SectionMap) -> PlaneTiles:
    """A plane's tiles over its tissue, their cores noted in the layer (the pyramid is built there)."""
    tiles = tile_grid(grid.shape, card.tile_size, card.overlap, sections)
    for tile in tiles:
        layer.mark_tiled(grid.source_window(tile.core))
    return PlaneTiles(z, grid, sections, class_base(len(card.classes)), tuple(tiles))


def run_tiles(slide: Slide, layer: LabelLayer, card: ModelCard, predict: Predictor, batch_size: int = 4,
              progress: bool = False, planes: list[Plane] | None = None,
              factor: float = 1.0) -> tuple[RegionStats, int, int]:
    """Segment every plane's tissue tiles into the layer's level (the source of a `factor` Grid).

    `predict(tiles, read)` yields (tile, classes, scores) per tile: the model (infer.predict_tiles),
    or in tests an oracle, so that stitching is checked apart from the network. A writer thread
    stores batch i while the model runs batch i+1. Progress is saved as the batches whose tiles are
    all in the store (stitch.ChunkWriter holds a chunk until its last tile); a resumed run skips
    those, and the rest keep their original boundaries, so it computes exactly what an
    uninterrupted run would."""
    stats, n_tiles, n_sections = RegionStats.from_dict(layer.progress.get("stats", {})), 0, 0
    grid = Grid(slide.yx_shape(layer.level), factor)
    array = ChunkCache(slide.pixels(layer.level))

    def store(writer: ChunkWriter, pending: list[RegionStats], results: list) -> None:
        pending.append(writer.put(results))
        z, stored = writer.plane.z, writer.batches_stored(batch_size)
        if stored > layer.done(z):
            for _ in range(stored - layer.done(z)):  # stats of the stored batches only: a resumed run adds the rest
                stats.merge(pending.pop(0))
            layer.save_progress(z, stored, stats.to_dict())

    with _progress(progress) as bar, ThreadPoolExecutor(max_workers=1) as thread:
        for z, (fill, sections) in enumerate(planes or find_tissue(slide)):
            n_sections = max(n_sections, sections.count)
            plane = plane_tiles(layer, z, grid, card, sections)
            tiles = plane.tiles
            skip = min(layer.done(z) * batch_size, len(tiles))
            writer, pending = ChunkWriter(layer, plane, start=skip, pyramid=layer.writes_final), []
            task = bar.add_task("tiles", total=len(tiles), completed=skip, rate=0.0)
            start, stored, results = time.perf_counter(), None, []
            read = functools.partial(read_tile, array, slide.axes, z=z, fill=fill, factor=factor)
            for i, result in enumerate(predict(list(tiles[skip:]), read), start=skip + 1):
                results.append(result)
                if i % batch_size == 0 or i == len(tiles):
                    if stored is not None:
                        stored.result()  # one batch stored at a time: memory stays one batch
                    stored, results = thread.submit(store, writer, pending, results), []
                bar.update(task, advance=1, rate=(i - skip) / max(time.perf_counter() - start, 1e-9))
            if stored is not None:
                stored.result()
            n_tiles += len(tiles)
    return stats, n_tiles, n_sections


def finish(layer: LabelLayer, card: ModelCard, stats: RegionStats, mode: str, provenance: dict) -> list[dict]:
    """Number instances (instance mode), build the pyramid and mark the layer complete; returns its region rows."""
    pixel_area = layer.slide.pixel_size(layer.level) ** 2
    if mode == "instance":
        rows = instance_table(number_layer(layer), stats, card, pixel_area)
    else:
        rows = region_table(stats, card, pixel_area)
    build_pyramid(layer)
    colors = [{"label-value": r["label-value"], "rgba": [*card.colors[r["class"]], 255]} for r in rows]
    finish_layer(layer, rows, colors, provenance)
    layer.drop_scratch()  # after the layer is complete: a kill before this renumbers from the scratch again
    return rows


def _run_on_cluster(client, spec: ClusterSpec, slide_url, pixel_size, model_path, device, card: ModelCard, layer: LabelLayer, planes: list[Plane],
                    factor: float, batch_size: int, min_score: float, tta: bool, progress: bool) -> tuple[RegionStats, int, int]:
    """run_tiles on Dask distributed: the same tiles and batches, run and written by the workers."""
    grid = Grid(layer.slide.yx_shape(layer.level), factor)

    def job_of(plane: PlaneTiles, fill: np.ndarray, threads: dict[str, int]) -> TileJob:
        return TileJob(str(slide_url), pixel_size, str(Path(model_path).resolve()), card.tile_size, card.overlap, device,
                       layer.name, layer.level, factor, fill, plane, batch_size, min_score, tta, threads)

    with _progress(progress) as bar:
        return run_tiles_on(client, spec, layer, job_of, planes, lambda z, sections: plane_tiles(layer, z, grid, card, sections),
                            batch_size, bar)


def check_size(slide: Slide, level: int, factor: float, card: ModelCard) -> None:
    """A slide that fits in less than one tile is not a slide the model can place regions on."""
    height, width = Grid(slide.yx_shape(level), factor).shape
    if height < card.tile_size and width < card.tile_size:
        raise UserError(f"{slide.url}: the image is {height} x {width} px at the model's {card.pixel_size_um:g} µm/px, smaller than "
                        f"one {card.tile_size} px tile; pass the whole slide (or a larger crop), or --tile-size {max(32, max(height, width) // 32 * 32)}")


def run_key(model_path: str | Path, settings: dict) -> str:
    """What must match for a killed run to be resumed: the model's bytes and the run's settings."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    with open(model_path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def segment(slide_url: str | Path, model_path: str | Path, *, labels: str = "sebre", rois: str | Path | None = None,
            geojson: str | Path | None = None, measurements: str | Path | None = None, preview: str | Path | None = None,
            overwrite: bool = False, resume: bool = False, device: str | None = None, batch_size: int | str = 4,
            min_score: float = 0.3, tile_size: int | None = None, overlap: int | None = None, tta: bool = False,
            pixel_size: float | None = None, mode: str = "region", roi_groups: bool = True, roi_level: int = 0,
            roi_tolerance: float | None = None, progress: bool = True, cluster: ClusterSpec | None = None) -> SegmentResult:
    """Segment a slide's brain regions into `labels/<labels>/` and write the asked-for exports.

    `cluster` runs the tiles and the pyramid on Dask distributed (cluster.py) instead of here.
    `mode` "region" keeps one label per class per section (SeBRe's rule); "instance" gives every
    connected piece its own label, for many small objects. A run killed part-way resumes when
    started again with the same settings (`resume=True` also insists that there is such a run to
    resume); `overwrite` starts over."""
    started = time.perf_counter()
    if resume and overwrite:
        raise UserError("--resume and --overwrite contradict each other; pass one of them")
    if mode not in MODES:
        raise UserError(f"--mode {mode!r} is not one of {', '.join(MODES)}")
    slide = open_slide(slide_url, pixel_size)
    check_name(labels)
    check_writable(slide, labels)
    dev = pick_device(device)
    model, card = load_checkpoint(model_path, dev, tile_size, overlap)
    check_channels(slide, card)
    level, factor = inference_level(slide, card.pixel_size_um)
    check_size(slide, level, factor, card)
    check_roi_level(slide, roi_level)  # before anything is written
    planes = find_tissue(slide)
    if batch_size == "auto":
        batch_size = auto_batch_size(model, card, dev)
    settings = {"grid": TILE_GRID, "level": level, "factor": factor, "batch_size": batch_size, "min_score": min_score, "tta": tta,
                "mode": mode, "card": card.to_json()}
    with hold_layer(slide, labels):
        layer = create_layer(slide, labels, level, overwrite=overwrite, run_key=run_key(model_path, settings), resume=resume,
                             scratch=mode == "instance")
        resumed = sum(layer.done(z) for z in range(slide.n_planes)) * batch_size
        with connect(cluster or ClusterSpec()) as client:
            try:
                if client is None:
                    predict = functools.partial(predict_tiles, model, card, device=dev, batch_size=batch_size, min_score=min_score,
                                                flips=tta)
                    stats, n_tiles, n_sections = run_tiles(slide, layer, card, predict, batch_size, progress, planes, factor)
                else:
                    stats, n_tiles, n_sections = _run_on_cluster(client, cluster, slide_url, pixel_size, model_path, device, card, layer,
                                                                 planes, factor, batch_size, min_score, tta, progress)
            except UserError as exc:
                raise UserError(f"{exc}; the tiles done so far are kept in labels/{labels}, and the same command resumes") from exc
            # inside `connect`: the pyramid is built by the cluster's workers when there is one
            rows = finish(layer, card, stats, mode, {"model": str(model_path), "architecture": card.architecture,
                                                     "pixel_size_um": card.pixel_size_um, "resampling_factor": factor, "mode": mode})
    result = SegmentResult(str(slide_url), labels, level, card.pixel_size_um if factor != 1.0 else slide.pixel_size(level),
                           n_sections, n_tiles, rows, resumed_tiles=min(resumed, n_tiles), batch_size=batch_size)
    result.outputs = export_regions(open_slide(slide_url, pixel_size), labels, rois=rois, geojson=geojson,
                                    measurements=measurements, preview=preview, groups=roi_groups,
                                    roi_frame=roi_level, tolerance=roi_tolerance)
    result.seconds = time.perf_counter() - started
    return result
