"""`sebre segment` as one function: slide + checkpoint in, label layer and exports out.

The steps follow the data: every input is checked before anything is written (the level from the
card's µm/px, the sections on a coarse level), then the label layer is made or a killed run's is
reopened, the tiles over tissue run in batches through the model and are stitched into it, the
pyramid and the metadata that marks the layer complete follow, and last the exports.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from .catalog import find_model
from .cluster import ClusterOptions, TileJob, connect, run_tiles_on
from .errors import Stopped, UserError
from .exports import Exports, export_regions
from .infer import predict_tiles, tile_reader
from .instances import number_instances
from .labels import class_base
from .layer import LabelLayer, create_layer, finish_layer, hold_layer
from .model import ModelCard
from .model_input import input_map
from .pixels import ChunkCache
from .preflight import Inputs, SegmentOptions, open_inputs, run_key, run_prior, run_settings
from .pyramid import build_pyramid
from .slide import Slide, open_slide
from .stitch import ChunkWriter, PlaneTiles, RegionStats, Result, TileRun
from .tiles import Grid, Tile, tile_grid
from .tissue import PlaneTissue, find_tissue

Predictor = Callable[[list[Tile], Callable[[Tile], np.ndarray]], Iterable[Result]]


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
    level_seconds: dict[str, float] = field(default_factory=dict)  # pyramid levels' time after the model


def region_table(stats: RegionStats, card: ModelCard, pixel_area_um2: float) -> list[dict]:
    """One row per label value: the properties written into the label layer."""
    base = class_base(len(card.classes))
    rows = []
    for value in sorted(stats.count):
        section, cls = divmod(value, base)
        rows.append(
            {
                "label-value": value,
                "name": card.classes[cls],
                "class": cls,
                "section": section,
                "score": round(stats.score[value] / stats.count[value], 4),
                "area_um2": round(stats.count[value] * pixel_area_um2, 1),
            }
        )
    return rows


def instance_table(
    found: list[tuple[int, int, int]], stats: RegionStats, card: ModelCard, pixel_area_um2: float
) -> list[dict]:
    """One row per instance (id, region value, pixels): its region's class, section and mean score."""
    base = class_base(len(card.classes))
    rows, seen = [], {}
    for label, value, pixels in found:
        section, cls = divmod(value, base)
        seen[value] = seen.get(value, 0) + 1
        score = stats.score.get(value, 0.0) / max(stats.count.get(value, 1), 1)
        rows.append(
            {
                "label-value": label,
                "name": card.classes[cls],
                "class": cls,
                "section": section,
                "instance": seen[value],
                "score": round(score, 4),
                "area_um2": round(pixels * pixel_area_um2, 1),
            }
        )
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

        plane = number_instances(
            lambda window, z=z: layer.read(z, window),
            write,
            slide.yx_shape(layer.level),
            layer.chunks,
            layer.tiled_chunks,
        )
        found += [(start + k, value, pixels) for k, (value, pixels) in enumerate(plane, 1)]
    return found


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]segment"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("tiles"),
        TextColumn("{task.fields[rate]:.1f}/s"),
        TimeRemainingColumn(),
        disable=not enabled,
        transient=True,
    )


def plane_tiles(layer: LabelLayer, z: int, grid: Grid, card: ModelCard, sections) -> PlaneTiles:
    """A plane's tiles over its tissue, their cores noted in the layer (the pyramid is built there)."""
    tiles = tile_grid(grid.shape, card.tile_size, card.overlap, sections)
    for tile in tiles:
        layer.mark_tiled(grid.source_window(tile.core))
    return PlaneTiles(z, grid, sections, class_base(len(card.classes)), tuple(tiles))


def run_tiles(
    slide: Slide,
    layer: LabelLayer,
    card: ModelCard,
    predict: Predictor,
    batch_size: int = 4,
    progress: bool = False,
    planes: list[PlaneTissue] | None = None,
    factor: float = 1.0,
    stop: threading.Event | None = None,
) -> TileRun:
    """Step 3, in this process: segment every plane's tissue tiles into the layer's level (the
    source of a `factor` Grid).

    `predict(tiles, read)` yields (tile, classes, scores) per tile: the model (infer.predict_tiles),
    or in tests an oracle, so that stitching is checked apart from the network. A writer thread
    stores batch i while the model runs batch i+1. Progress is saved as the batches whose tiles are
    all in the store (stitch.ChunkWriter holds a chunk until its last tile); a resumed run skips
    those, and the rest keep their original boundaries, so it computes exactly what an
    uninterrupted run would. Once `stop` is set, no new batch is stored: the run raises `Stopped`
    with its saved progress, and the batches after it are left to the next run."""
    stats, n_sections = RegionStats.from_dict(layer.progress.get("stats", {})), 0
    grid = Grid(slide.yx_shape(layer.level), factor)
    array = ChunkCache(slide.pixels(layer.level))
    planes = planes or find_tissue(slide)
    tiled = [plane_tiles(layer, z, grid, card, tissue.sections) for z, tissue in enumerate(planes)]
    total = sum(len(plane.tiles) for plane in tiled)

    def store(writer: ChunkWriter, pending: list[RegionStats], results: list) -> None:
        pending.append(writer.put(results))
        z, stored = writer.plane.z, writer.batches_stored(batch_size)
        if stored > layer.done(z):
            for _ in range(stored - layer.done(z)):  # stats of the stored batches only: a resumed run adds the rest
                stats.merge(pending.pop(0))
            layer.save_progress(z, stored, stats.to_dict())

    def stopped() -> Stopped:
        done = sum(min(layer.done(p.z) * batch_size, len(p.tiles)) for p in tiled)
        return Stopped(done, total)

    with _progress(progress) as bar, ThreadPoolExecutor(max_workers=1) as thread:
        for plane, tissue in zip(tiled, planes):
            z, tiles = plane.z, plane.tiles
            n_sections = max(n_sections, tissue.sections.count)
            skip = min(layer.done(z) * batch_size, len(tiles))
            writer, pending = ChunkWriter(layer, plane, start=skip, pyramid=layer.writes_final), []
            task = bar.add_task("tiles", total=len(tiles), completed=skip, rate=0.0)
            start, stored, results = time.perf_counter(), None, []
            read = tile_reader(array, slide.axes, z, input_map(card.input, tissue.image, tissue.coarse), factor)
            predicted = predict(list(tiles[skip:]), read)
            for i, result in enumerate(predicted, start=skip + 1):
                results.append(result)
                if i % batch_size == 0 or i == len(tiles):
                    if stored is not None:
                        stored.result()  # one batch stored at a time: memory stays one batch
                    if stop is not None and stop.is_set():
                        predicted.close()
                        raise stopped()
                    stored, results = thread.submit(store, writer, pending, results), []
                bar.update(task, advance=1, rate=(i - skip) / max(time.perf_counter() - start, 1e-9))
            if stored is not None:
                stored.result()
    return TileRun(stats, total, n_sections)


def runs_instances(card: ModelCard, options: SegmentOptions) -> bool:
    """Does the run need the network's instances? Not where its semantic branch gives the class
    maps of region mode: then the backbone, the FPN and that branch alone run."""
    return options.mode == "instance" or not card.semantic


def run_tiles_here(inputs: Inputs, layer: LabelLayer, options: SegmentOptions, stop: threading.Event | None) -> TileRun:
    """Step 3 in this process, with the model."""
    predict = functools.partial(
        predict_tiles,
        inputs.model,
        inputs.card,
        device=inputs.device,
        batch_size=inputs.batch_size,
        min_score=options.min_score,
        flips=options.tta,
        instances=runs_instances(inputs.card, options),
        prior=run_prior(inputs.card, options),
    )
    return run_tiles(
        inputs.slide,
        layer,
        inputs.card,
        predict,
        inputs.batch_size,
        options.progress,
        inputs.planes,
        inputs.factor,
        stop,
    )


def run_tiles_on_cluster(
    client,
    cluster: ClusterOptions,
    inputs: Inputs,
    layer: LabelLayer,
    slide_url,
    model_path,
    options: SegmentOptions,
    stop: threading.Event | None,
) -> TileRun:
    """Step 3 on Dask distributed: the same tiles and batches, run and written by the workers."""
    grid = Grid(layer.slide.yx_shape(layer.level), inputs.factor)

    def job_of(plane: PlaneTiles, tissue: PlaneTissue, threads: dict[str, int]) -> TileJob:
        return TileJob(
            slide_url=str(slide_url),
            pixel_size=options.pixel_size,
            model_path=str(Path(model_path).resolve()),
            tile_size=inputs.card.tile_size,
            overlap=inputs.card.overlap,
            device=options.device,
            labels=layer.name,
            level=layer.level,
            factor=inputs.factor,
            view=input_map(inputs.card.input, tissue.image, tissue.coarse),
            plane=plane,
            batch_size=inputs.batch_size,
            min_score=options.min_score,
            tta=options.tta,
            instances=runs_instances(inputs.card, options),
            prior=run_prior(inputs.card, options),
            threads=threads,
        )

    with _progress(options.progress) as bar:
        return run_tiles_on(
            client,
            cluster,
            layer,
            job_of,
            inputs.planes,
            lambda z, sections: plane_tiles(layer, z, grid, inputs.card, sections),
            inputs.batch_size,
            bar,
            stop,
        )


def finish(
    layer: LabelLayer, card: ModelCard, stats: RegionStats, mode: str, provenance: dict, client=None
) -> tuple[list[dict], dict[str, float]]:
    """Step 4: number instances (instance mode), build the pyramid (on the cluster's workers with a
    Dask `client`) and mark the layer complete; returns its region rows and the seconds spent on
    each pyramid level."""
    pixel_area = layer.slide.pixel_size(layer.level) ** 2
    if mode == "instance":
        rows = instance_table(number_layer(layer), stats, card, pixel_area)
    else:
        rows = region_table(stats, card, pixel_area)
    seconds = build_pyramid(layer, client)
    colors = [{"label-value": r["label-value"], "rgba": [*card.colors[r["class"]], 255]} for r in rows]
    finish_layer(layer, rows, colors, provenance)
    layer.drop_scratch()  # after the layer is complete: a kill before this renumbers from the scratch again
    return rows, {str(level): spent for level, spent in sorted(seconds.items())}


WRITE_FAULTS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EROFS: "the file system became read-only",
    errno.EIO: "the disk reported an input/output error",
}


@contextlib.contextmanager
def refused_writes(slide: Slide, name: str) -> Iterator[None]:
    """A write the file system refuses mid-run (full disk, quota, read-only, I/O error) as one line:
    the store, what failed and the fix. The layer stays resumable: chunks are written to a temporary
    file and renamed into place, and progress names only batches whose chunks are all stored."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in WRITE_FAULTS:
            raise
        where = f" ({exc.filename})" if exc.filename else ""
        raise UserError(
            f"{slide.url}: {WRITE_FAULTS[exc.errno]} while writing labels/{name}{where}; free space on it (or fix the "
            "file system), then run the same command to resume"
        ) from exc


def segment(
    slide_url: str | Path,
    model_path: str | Path | None = None,
    options: SegmentOptions = SegmentOptions(),
    exports: Exports = Exports(),
    cluster: ClusterOptions = ClusterOptions(),
    stop: threading.Event | None = None,
) -> SegmentResult:
    """Segment a slide's brain regions into `labels/<options.labels>/` and write the asked-for exports.

    `model_path` is a checkpoint, or the name of a shipped model (catalog.py); None: the shipped
    mouse model. Once `stop` is set (the command line sets it on SIGTERM and SIGINT) the run stores
    no new batch and raises `errors.Stopped` with its progress saved and its lock released; the
    same call resumes it. A write the file system refuses (a full disk) is a `UserError` naming the
    store, and the same call resumes too.

    1. `open_inputs`: the slide, the model, the level at the card's µm/px and the tissue, all
       checked before anything is written;
    2. `create_layer`: the label layer, or a killed run's with the same settings to resume;
    3. `run_tiles_here`, or `run_tiles_on_cluster` with a Dask cluster (cluster.py): the tiles over
       tissue through the model, stitched into the layer;
    4. `finish`: the pyramid, then the metadata that marks the layer complete;
    5. `export_regions`: RoiSet.zip, GeoJSON, measurements and preview, as asked."""
    started = time.perf_counter()
    model_path = find_model(model_path)
    inputs = open_inputs(slide_url, model_path, options, exports)
    slide, card, name = inputs.slide, inputs.card, options.labels
    with hold_layer(slide, name):
        layer = create_layer(
            slide,
            name,
            inputs.level,
            overwrite=options.overwrite,
            run_key=run_key(model_path, run_settings(inputs, options)),
            resume=options.resume,
            scratch=options.mode == "instance",
        )
        resumed = sum(layer.done(z) for z in range(slide.n_planes)) * inputs.batch_size
        with connect(cluster) as client, refused_writes(slide, name):
            try:
                if client is None:
                    run = run_tiles_here(inputs, layer, options, stop)
                else:
                    run = run_tiles_on_cluster(client, cluster, inputs, layer, slide_url, model_path, options, stop)
            except UserError as exc:
                raise UserError(
                    f"{exc}; the tiles done so far are kept in labels/{name}, and running the same again resumes"
                ) from exc
            if stop is not None and stop.is_set():
                raise Stopped(run.tiles, run.tiles)
            # inside `connect`: the pyramid is built by the cluster's workers when there is one
            rows, level_seconds = finish(
                layer,
                card,
                run.stats,
                options.mode,
                {
                    "model": str(model_path),
                    "architecture": card.architecture,
                    "pixel_size_um": card.pixel_size_um,
                    "resampling_factor": inputs.factor,
                    "mode": options.mode,
                },
                client,
            )
    result = SegmentResult(
        str(slide_url),
        name,
        inputs.level,
        card.pixel_size_um if inputs.factor != 1.0 else slide.pixel_size(inputs.level),
        run.sections,
        run.tiles,
        rows,
        resumed_tiles=min(resumed, run.tiles),
        batch_size=inputs.batch_size,
        level_seconds=level_seconds,
    )
    result.outputs = export_regions(open_slide(slide_url, options.pixel_size), name, exports)
    result.seconds = time.perf_counter() - started
    return result
