"""The `sebre` command. Each subcommand turns its flags into the API's options and makes one call;
errors a user can fix become one line on stderr and exit code 2 (`--debug` shows the traceback;
cli_support.py says the library's parameters as flags). `train` and `evaluate` live in cli_train.py."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from .cli_support import _positive_int, _run, console, options_from, print_regions, state, stop_on_signals
from .cli_train import evaluate, train
from .errors import Stopped

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Brain-region segmentation of OME-Zarr slides (SeBRe's Mask R-CNN), with results for Fiji, napari and QuPath.",
)
app.command()(train)
app.command()(evaluate)


@app.callback()
def main(debug: bool = typer.Option(False, "--debug", help="Show tracebacks instead of one-line errors.")):
    state["debug"] = debug
    logger = logging.getLogger("sebre_ij")
    if not any(isinstance(h, RichHandler) for h in logger.handlers):
        logger.addHandler(RichHandler(console=Console(stderr=True), show_time=False, show_path=False))
    logger.setLevel(logging.DEBUG if debug else logging.INFO)


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
    atlas_prior: bool = typer.Option(
        True, help="Weigh region maps against the Allen atlas cut at each section's plane, where the model asks for it."
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

    given = locals()
    batch = batch_size if batch_size == "auto" else _positive_int(batch_size, "--batch-size")
    options = options_from(SegmentOptions, given, batch_size=batch)
    exports, where = options_from(Exports, given), options_from(ClusterOptions, given)
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

    table = Table("model", "where", "classes", "µm/px", "input", "architecture", "tile", "atlas prior", "trained on")
    for found in list_models():
        card = found.card
        if card is None:
            table.add_row(found.path.stem, str(found.path), f"[red]{found.problem}[/]", "", "", "", "", "", "")
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
            f"{card.atlas_prior:g}" if card.atlas_prior else "-",
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
