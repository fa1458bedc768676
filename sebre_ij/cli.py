"""The `sebre` command. Each subcommand turns its flags into the API's options and makes one call;
errors a user can fix become one line on stderr and exit code 2 (`--debug` shows the traceback).

The library names its parameters in messages (`overwrite=True`); this module says them as the
flags a command-line user types (`--overwrite`)."""

from __future__ import annotations

import contextlib
import logging
import re
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from .errors import Stopped, UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Brain-region segmentation of OME-Zarr slides (SeBRe's Mask R-CNN), with results for Fiji, napari and QuPath.",
)
console = Console()
state = {"debug": False}

# Library parameters that messages may name, said as flags: `name=True` -> --flag, `name=False` ->
# --no-flag, `name=VALUE` -> --flag VALUE.
PARAMETERS = (
    "labels",
    "overwrite",
    "resume",
    "mode",
    "device",
    "batch_size",
    "min_score",
    "tile_size",
    "overlap",
    "tta",
    "pixel_size",
    "pixel_size_in",
    "rois",
    "geojson",
    "measurements",
    "preview",
    "roi_groups",
    "roi_level",
    "roi_tolerance",
    "workers",
    "scheduler",
    "cluster",
    "queue",
    "cores",
    "memory",
    "gpus",
    "jobs",
    "walltime",
    "arch",
    "steps",
    "lr",
    "seed",
    "class_map",
    "classes",
    "val_sections",
    "val_fraction",
    "test_sections",
    "val_every",
    "init",
    "semantic",
    "model",
    "pred_labels",
    "truth_labels",
    "atlas",
    "atlas_fraction",
    "input",
    "instance_loss",
)
NAMED = re.compile(r"\b(" + "|".join(PARAMETERS) + r")=(True\b|False\b)?")


def as_flags(message: str) -> str:
    """A library message with its parameters said as command-line flags.

    Examples
    --------
    >>> as_flags("pass overwrite=True to replace it or labels=NAME for another")
    'pass --overwrite to replace it or --labels NAME for another'
    """

    def flag(match: re.Match) -> str:
        name, value = match[1].replace("_", "-"), match[2]
        if value == "True":
            return f"--{name}"
        if value == "False":
            return f"--no-{name}"
        follows = match.string[match.end() : match.end() + 1]
        return f"--{name}" if follows in ("", " ", ",", ";", ")") else f"--{name} "

    return NAMED.sub(flag, message)


@app.callback()
def main(debug: bool = typer.Option(False, "--debug", help="Show tracebacks instead of one-line errors.")):
    state["debug"] = debug
    logger = logging.getLogger("sebre_ij")
    if not any(isinstance(h, RichHandler) for h in logger.handlers):
        logger.addHandler(RichHandler(console=Console(stderr=True), show_time=False, show_path=False))
    logger.setLevel(logging.DEBUG if debug else logging.INFO)


def _run(fn, *args, **kwargs):
    """Call the API; turn user errors (and unreadable files) into one line and exit code 2."""
    try:
        return fn(*args, **kwargs)
    except (UserError, FileExistsError, FileNotFoundError, PermissionError) as exc:
        if state["debug"]:
            raise
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"sebre: error: {as_flags(message)}", file=sys.stderr)
        raise typer.Exit(2) from None


@contextlib.contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """SIGTERM (SLURM's preemption, scancel) and SIGINT (Ctrl-C) ask the run to stop after the batch
    it is storing; a second signal stops at once. The previous handlers come back after."""
    stop = threading.Event()

    def ask(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.signum = signum
        stop.set()

    wanted = (signal.SIGTERM, signal.SIGINT)
    before = {s: signal.signal(s, ask) for s in wanted}
    try:
        yield stop
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def _positive_int(text: str, flag: str) -> int:
    """A whole number of 1 or more from the command line, or the one-line error and exit 2."""
    if text.isdigit() and int(text) > 0:
        return int(text)
    print(f"sebre: error: {flag} {text!r}: give a whole number of 1 or more, or auto", file=sys.stderr)
    raise typer.Exit(2)


@app.command()
def info(slide: str = typer.Argument(..., help="OME-Zarr image: a path or fsspec URL.")):
    """Levels, shapes, axes, µm/px per level, channels and label layers of a slide."""
    from .slide import open_slide

    s = _run(open_slide, slide)
    console.print(
        f"[bold]{slide}[/]  NGFF {s.version}, zarr v{s.zarr_format}, axes {s.axes}, channels {', '.join(s.channels)}"
    )
    table = Table("level", "path", "shape", "chunks", "µm/px", "dtype")
    for i, lv in enumerate(s.levels):
        table.add_row(str(i), lv.path, str(lv.shape), str(lv.chunks), f"{s.pixel_size(i):.4g}", lv.dtype)
    console.print(table)
    console.print(f"label layers: {', '.join(s.label_names()) or 'none'}")


@app.command()
def synth(
    out: Path = typer.Argument(..., help="The OME-Zarr store to create."),
    sections: int = typer.Option(4, help="Brain sections on the slide."),
    size: tuple[int, int] = typer.Option((4096, 4096), help="Slide height and width in level-0 pixels."),
    pixel_size: float = typer.Option(4.0, help="µm per pixel at level 0."),
    seed: int = typer.Option(0, help="Random seed."),
    stain: str | None = typer.Option(None, help="dab (brown) or nissl (violet); default: drawn from the seed."),
    ngff: str = typer.Option("0.4", help="NGFF version to write: 0.4 (zarr v2) or 0.5 (zarr v3)."),
):
    """A synthetic whole slide of brain-like sections, with its ground truth as label layer `truth`."""
    from .stores import make_slide_store

    _run(make_slide_store, out, sections=sections, size=size, pixel_size=pixel_size, seed=seed, ngff=ngff, stain=stain)
    console.print(f"wrote {out} ({sections} sections, {size[0]} x {size[1]} px at {pixel_size} µm/px, labels/truth)")


@app.command()
def train(
    data: list[str] = typer.Argument(
        ...,
        help="OME-Zarr stores with a label layer, section folders (sections.json or SeBRe's "
        "section_img_N.jpg + section_masks_N/), or images (TIFF, PNG, OME-Zarr) with --rois.",
    ),
    out: Path = typer.Option(..., "--out", help="Checkpoint file to write (.safetensors)."),
    arch: str = typer.Option("tiny_fpn", help="tiny_fpn (fast on CPU), mobilenet_v3_fpn or resnet50_fpn (SeBRe's)."),
    steps: int = typer.Option(400, help="Optimiser steps."),
    pixel_size: float = typer.Option(16.0, help="µm per pixel the model works at."),
    tile_size: int = typer.Option(256, help="Tile side in pixels."),
    overlap: int = typer.Option(64, help="Tile overlap in pixels."),
    batch_size: int = typer.Option(4, help="Tiles per step."),
    lr: float = typer.Option(2e-3, help="Peak learning rate (AdamW; warm-up, then cosine decay)."),
    labels: str | None = typer.Option(None, help="Label layer to learn (default: the first)."),
    seed: int = typer.Option(0, help="Random seed."),
    device: str | None = typer.Option(None, help="cpu, cuda or cuda:N (default: CUDA when present)."),
    rois: list[Path] | None = typer.Option(
        None,
        "--rois",
        help="RoiSet.zip annotating each image, in order (ROI names give the classes: s1-cortex or cortex).",
    ),
    class_map: Path | None = typer.Option(None, "--class-map", help="JSON object mapping ROI names to class names."),
    pixel_size_in: float | None = typer.Option(
        None, "--pixel-size-in", help="µm per pixel of the input images, when their files do not say."
    ),
    classes: Path | None = typer.Option(
        None, "--classes", help="Class table JSON for a SeBRe folder (as in sections.json; default: SeBRe's 8 classes)."
    ),
    val_sections: list[str] | None = typer.Option(
        None, "--val-sections", help="Hold out this section (repeatable), e.g. glta_s044."
    ),
    val_fraction: float | None = typer.Option(
        None, "--val-fraction", help="Hold out this fraction of the sections, drawn with --seed."
    ),
    test_sections: list[str] | None = typer.Option(
        None,
        "--test-sections",
        help="Leave this section out of training and validation (repeatable); listed in the card.",
    ),
    val_every: int = typer.Option(
        100, "--val-every", help="Segment the held-out sections every this many steps; the best is kept."
    ),
    workers: int = typer.Option(
        0, "--workers", help="Processes preparing augmented tiles (0: the training process); give a GPU several."
    ),
    init: Path | None = typer.Option(
        None, "--init", help="Start from torchvision weights on disk (.pth: COCO Mask R-CNN or an ImageNet backbone)."
    ),
    semantic: bool = typer.Option(
        True,
        "--semantic/--no-semantic",
        help="Add a per-pixel semantic branch whose maps give the regions (Panoptic FPN).",
    ),
    input_mode: str = typer.Option(
        "channels", "--input", help="channels (the data's own) or luminance (one channel for any stain or modality)."
    ),
    atlas: Path | None = typer.Option(
        None,
        "--atlas",
        help="Also train on sections generated from this Allen CCFv3 folder (or $SEBRE_ATLAS, with --atlas-fraction).",
    ),
    atlas_fraction: float | None = typer.Option(
        None,
        "--atlas-fraction",
        help="Share of tiles generated from the atlas (default 0.7 with --atlas; 1.0: the data only validates).",
    ),
    instance_loss: float = typer.Option(
        1.0,
        "--instance-loss",
        help="Weight of Mask R-CNN's losses beside the semantic "
        "branch's (0: the semantic branch alone, a step about 2x cheaper).",
    ),
):
    """Train a Mask R-CNN and write one checkpoint carrying its model card."""
    from .datasets import TrainingData
    from .train import TrainOptions, curve_paths
    from .train import train as train_model

    inputs = TrainingData(
        tuple(data),
        rois=tuple(str(r) for r in rois or ()),
        label_name=labels,
        class_map=class_map,
        pixel_size_in=pixel_size_in,
        classes=classes,
    )
    options = TrainOptions(
        arch=arch,
        pixel_size=pixel_size,
        tile_size=tile_size,
        overlap=overlap,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        device=device,
        val_sections=tuple(val_sections or ()),
        val_fraction=val_fraction,
        test_sections=tuple(test_sections or ()),
        val_every=val_every,
        init=init,
        workers=workers,
        semantic=semantic,
        input=input_mode,
        atlas=atlas,
        atlas_fraction=atlas_fraction,
        instance_loss=instance_loss,
    )
    card = _run(train_model, inputs, out, options)
    console.print(
        f"wrote {out}: {card.architecture}, {len(card.classes) - 1} classes, {card.pixel_size_um} µm/px, "
        f"{card.training['seconds']} s, final loss {card.training['final_loss']}"
    )
    if "init" in card.training:
        console.print(
            f"started from {init}: {card.training['init']['tensors_taken']} of "
            f"{card.training['init']['tensors_in_model']} tensors"
        )
    if "atlas" in card.training:
        generated = card.training["atlas"]
        console.print(f"atlas sections: {generated['fraction']:.0%} of the tiles, from {generated['folder']}")
    if card.training["val_sections"]:
        console.print(
            f"held out for validation: {', '.join(card.training['val_sections'])}; best mean Dice "
            f"{card.training['val_dice']} at step {card.training['best_step']}"
        )
    console.print(f"curves: {', '.join(str(p) for p in curve_paths(out))}")


def print_regions(rows: list[dict], dice: dict[str, float] | None = None) -> None:
    table = Table("value", "section", "region", "area (mm²)", "score", *(["Dice (class)"] if dice else []))
    for r in rows:
        extra = [f"{dice.get(r['name'], float('nan')):.3f}"] if dice else []
        table.add_row(
            str(r["label-value"]),
            str(r["section"]),
            r["name"],
            f"{r['area_um2'] / 1e6:.3f}",
            f"{r['score']:.2f}",
            *extra,
        )
    console.print(table)


@app.command()
def segment(
    slide: str = typer.Argument(..., help="OME-Zarr image: a path or fsspec URL."),
    model: str | None = typer.Option(
        None,
        "--model",
        help="Checkpoint written by `sebre train`, or a shipped model's "
        "name (default: mouse, the shipped one; `sebre models` lists them).",
    ),
    labels: str = typer.Option("sebre", "--labels", help="Name of the label layer to write."),
    rois: Path | None = typer.Option(None, help="Write ImageJ ROIs (RoiSet.zip) here."),
    geojson: Path | None = typer.Option(None, help="Write QuPath GeoJSON here."),
    measurements: Path | None = typer.Option(None, help="Write a measurements CSV here."),
    preview: Path | None = typer.Option(None, help="Write a preview PNG here."),
    overwrite: bool = typer.Option(False, help="Replace an existing label layer of that name."),
    resume: bool = typer.Option(
        False, help="Finish an interrupted run of this command (the same command without it resumes too)."
    ),
    pixel_size: float | None = typer.Option(
        None, help="µm per pixel of level 0, when the slide's metadata lacks it or is wrong."
    ),
    mode: str = typer.Option(
        "region", help="region: one label per class per section (SeBRe); instance: one per connected piece."
    ),
    roi_groups: bool = typer.Option(True, help="ROI group = class index (ImageJ then shows group colours)."),
    roi_level: int = typer.Option(0, help="Pyramid level whose pixel coordinates the ROIs use (0: full resolution)."),
    roi_tolerance: float | None = typer.Option(
        None, help="Outline simplification in pixels of the traced level (default 0.4; 0: none)."
    ),
    batch_size: str = typer.Option("4", help="Tiles per model call, or auto (on a GPU: from its free memory)."),
    min_score: float = typer.Option(0.3, help="Ignore detections scoring below this."),
    tile_size: int | None = typer.Option(None, help="Tile side in pixels (default: the model card's)."),
    overlap: int | None = typer.Option(None, help="Tile overlap in pixels (default: the model card's)."),
    tta: bool = typer.Option(
        False, help="Also run each tile mirrored 3 ways and average (4x the model time, better regions)."
    ),
    device: str | None = typer.Option(None, help="cpu, cuda or cuda:N (default: CUDA when present)."),
    workers: int = typer.Option(0, help="Run on a local Dask cluster of this many worker processes."),
    scheduler: str | None = typer.Option(None, help="Run on the Dask scheduler at this address (tcp://HOST:8786)."),
    cluster: str | None = typer.Option(None, help="Start a Dask cluster through a job queue: slurm."),
    queue: str | None = typer.Option(None, help="With --cluster: the queue (SLURM partition)."),
    cores: int = typer.Option(4, help="With --cluster: cores per job."),
    memory: str = typer.Option("16GB", help="With --cluster: memory per job."),
    gpus: int = typer.Option(0, help="With --cluster: GPUs per job (--gres=gpu:N)."),
    jobs: int = typer.Option(1, help="With --cluster: number of jobs (one worker each)."),
    walltime: str = typer.Option("01:00:00", help="With --cluster: time limit per job."),
    imagej: bool = typer.Option(
        False, "--imagej", help="Last, push the regions into the ROI Manager of ImageJ (needs a display)."
    ),
    fiji: Path | None = typer.Option(
        None, "--fiji", help="With --imagej: start this Fiji.app through pyimagej instead of ij.jar."
    ),
):
    """Segment brain regions into labels/NAME of the same store, and export them."""
    from .allocator import kept_heap
    from .cluster import ClusterOptions
    from .exports import Exports
    from .segment import SegmentOptions
    from .segment import segment as run_segment

    options = SegmentOptions(
        labels=labels,
        overwrite=overwrite,
        resume=resume,
        mode=mode,
        device=device,
        batch_size=batch_size if batch_size == "auto" else _positive_int(batch_size, "--batch-size"),
        min_score=min_score,
        tile_size=tile_size,
        overlap=overlap,
        tta=tta,
        pixel_size=pixel_size,
    )
    exports = Exports(
        rois=rois,
        geojson=geojson,
        measurements=measurements,
        preview=preview,
        roi_groups=roi_groups,
        roi_level=roi_level,
        roi_tolerance=roi_tolerance,
    )
    where = ClusterOptions(
        workers=workers,
        scheduler=scheduler,
        cluster=cluster,
        queue=queue,
        cores=cores,
        memory=memory,
        gpus=gpus,
        jobs=jobs,
        walltime=walltime,
    )
    with kept_heap(), stop_on_signals() as stop:  # the mask head's big blocks stay mapped between calls
        try:
            result = _run(run_segment, slide, model, options, exports, where, stop)
        except Stopped as exc:
            print(f"sebre: {exc}", file=sys.stderr)
            raise typer.Exit(128 + stop.signum) from None
    console.print(
        f"{result.slide}: labels/{result.labels} from level {result.level} at {result.pixel_size_um:.3g} µm/px, "
        f"{result.sections} sections, {result.tiles} tiles in batches of {result.batch_size}, {result.seconds:.1f} s"
    )
    if result.resumed_tiles:
        console.print(f"resumed an interrupted run: {result.resumed_tiles} tiles were already done")
    print_regions(result.regions)
    for kind, path in result.outputs.items():
        console.print(f"{kind}: {path}")
    if imagej:
        from .exports import push_regions
        from .slide import open_slide

        n = _run(push_regions, open_slide(slide), labels, fiji=fiji, groups=roi_groups)
        console.print(f"ImageJ ROI Manager: {n} ROIs")


@app.command()
def models():
    """The shipped model and those in the cache folder, with their cards."""
    from .catalog import cache_dir, list_models

    table = Table("model", "where", "classes", "µm/px", "input", "architecture", "tile", "trained on")
    for found in list_models():
        card = found.card
        if card is None:
            table.add_row(found.path.stem, str(found.path), f"[red]{found.problem}[/]", "", "", "", "", "")
            continue
        data = card.training.get("atlas", {}).get("version") or ", ".join(
            Path(d).name for d in card.training.get("data", [])
        )
        table.add_row(
            found.path.stem + (" (shipped)" if found.shipped else ""),
            str(found.path),
            str(len(card.classes) - 1),
            f"{card.pixel_size_um:g}",
            card.input,
            card.architecture,
            f"{card.tile_size} px",
            data or "-",
        )
    console.print(table)
    console.print(f"cache folder: {cache_dir()} (set SEBRE_CACHE to move it)")


@app.command()
def rois(
    slide: str = typer.Argument(..., help="OME-Zarr image with a label layer."),
    labels: str = typer.Option(..., "--labels", help="Label layer to export."),
    out: Path = typer.Option(..., "--out", help="RoiSet.zip to write."),
    geojson: Path | None = typer.Option(None, help="Also write QuPath GeoJSON here."),
    roi_groups: bool = typer.Option(True, help="ROI group = class index (ImageJ then shows group colours)."),
    roi_level: int = typer.Option(0, help="Pyramid level whose pixel coordinates the ROIs use (0: full resolution)."),
    roi_tolerance: float | None = typer.Option(
        None, help="Outline simplification in pixels of the traced level (default 0.4; 0: none)."
    ),
):
    """ImageJ ROIs (and optionally GeoJSON) from an existing label layer."""
    from .exports import Exports, export_regions
    from .slide import open_slide

    s = _run(open_slide, slide)
    exports = Exports(
        rois=out, geojson=geojson, roi_groups=roi_groups, roi_level=roi_level, roi_tolerance=roi_tolerance
    )
    written = _run(export_regions, s, labels, exports)
    for kind, path in written.items():
        console.print(f"{kind}: {path}")


@app.command()
def evaluate(
    pred: str = typer.Argument(
        ...,
        help="Predicted regions: slide.zarr (with --pred-labels) or slide.zarr/labels/NAME, "
        "a label image (PNG/TIFF), a folder or set of them, or a RoiSet.zip.",
    ),
    truth: str = typer.Argument(..., help="True regions, in any of the same forms."),
    out: Path | None = typer.Option(
        None, "--out", help="Write metrics.json, metrics.csv, confusion.csv and outline PNGs here."
    ),
    pred_labels: str | None = typer.Option(
        None, "--pred-labels", help="Label layer of PRED's store (default: its only one)."
    ),
    truth_labels: str | None = typer.Option(
        None, "--truth-labels", help="Label layer of TRUTH's store (default: its only one)."
    ),
    classes: Path | None = typer.Option(
        None, "--classes", help="Class table JSON for label images (as in sections.json)."
    ),
    pixel_size: float | None = typer.Option(
        None,
        "--pixel-size",
        help="µm per pixel to compare label layers at (default: the level the prediction was inferred at).",
    ),
):
    """Score predicted regions against true ones: Dice and IoU per region, mask mAP, confusion table."""

    def show(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    from .evaluate import evaluate as run_evaluate

    report = _run(
        run_evaluate,
        pred,
        truth,
        out,
        pred_labels=pred_labels,
        truth_labels=truth_labels,
        classes=classes,
        pixel_size=pixel_size,
    )
    table = Table("region", "Dice", "IoU", "AP@0.5", "AP@0.5:0.95", "true px", "predicted px")
    for r in report["regions"]:
        table.add_row(
            r["region"],
            show(r["dice"]),
            show(r["iou"]),
            show(r["ap50"]),
            show(r["ap"]),
            str(r["truth_px"]),
            str(r["pred_px"]),
        )
    console.print(table)
    console.print(
        f"[bold]mean Dice {show(report['mean_dice'])}, mean IoU {show(report['mean_iou'])}, "
        f"mAP@0.5 {show(report['mAP@0.5'])}, mAP@0.5:0.95 {show(report['mAP@0.5:0.95'])}[/]"
    )
    if out is not None:
        console.print(
            f"wrote {out}/metrics.json, metrics.csv, confusion.csv and "
            f"{len({r['section'] for r in report['sections']})} outline PNGs"
        )


@app.command()
def demo(out: Path = typer.Option(Path("sebre-demo"), help="Folder for the demo slide and results.")):
    """Draw a demo slide from the atlas the package carries, segment it with the shipped model, export
    everything and score it against the slide's truth."""
    from .demo import run_demo

    console.print(f"sebre demo: a slide of four atlas sections in {out}/, segmented with the shipped model")
    report = _run(run_demo, out)
    card = report["card"]
    console.print(
        f"model: {card.architecture} at {card.pixel_size_um:g} µm/px ({report['model']}); segmented level "
        f"{report['level']} ({report['tiles']} tiles) in {report['seconds']:.1f} s"
    )
    print_regions(report["regions"], report["dice_by_region"])
    console.print(
        "Dice per region against truth: " + ", ".join(f"{k} {v:.3f}" for k, v in report["dice"].items() if k != "mean")
    )
    console.print(f"[bold]mean Dice {report['dice']['mean']:.3f}[/]")
    for kind, path in report["outputs"].items():
        console.print(f"{kind}: {path}")


if __name__ == "__main__":
    app()
