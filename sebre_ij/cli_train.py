"""`sebre train` and `sebre evaluate`: flags into TrainOptions and one call to `train.train`, or one
call to `evaluate.evaluate`. Registered on the `sebre` app by cli.py."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from .cli_support import _run, console, options_from


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
    ema: float = typer.Option(
        0.0,
        "--ema",
        help="Keep a moving average of the weights with this decay per step (e.g. 0.998; 0: the weights themselves).",
    ),
    hemisections: float = typer.Option(
        0.0,
        "--hemisections",
        help="Share of the real sections' tiles showing one half of the section only (e.g. 0.15), "
        "for slides of hemisections.",
    ),
    atlas_prior: float = typer.Option(
        0.0,
        "--atlas-prior",
        help="Weight of the Allen atlas cut against the model's region maps at inference (0: none; "
        "for models of the atlas's classes).",
    ),
):
    """Train a Mask R-CNN and write one checkpoint carrying its model card."""
    from .curves import curve_paths
    from .datasets import TrainingData
    from .train import TrainOptions
    from .train import train as train_model

    given = locals()
    rois = tuple(str(r) for r in rois or ())
    inputs = options_from(TrainingData, given, inputs=tuple(data), rois=rois, label_name=labels)
    sections = {"val_sections": tuple(val_sections or ()), "test_sections": tuple(test_sections or ())}
    options = options_from(TrainOptions, given, input=input_mode, **sections)
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
