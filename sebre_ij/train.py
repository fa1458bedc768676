"""Training: annotated sections in, one checkpoint with its model card out.

The sections (datasets.py) are `Example`s at the model's µm/px. Batches are random tiles drawn
from them, augmented (augment.py), and turned into Mask R-CNN targets with one instance per
connected piece of each class (SeBRe's region rule, tile by tile). `train` wires the pieces
together; `fit` is the loop.
"""

from __future__ import annotations

import csv
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from scipy import ndimage as ndi

from .atlas import ATLAS_VERSION, SectionRecipe, atlas_folder
from .augment import Augmentation
from .datasets import Example, Split, TrainingData, load_examples, split_by_section
from .errors import UserError
from .infer import predict_image
from .metrics import confusion, dice_iou
from .model import ARCHITECTURES, ModelCard, build_model, load_init, pick_device, save_checkpoint
from .model_input import INPUT_MODES, LUMINANCE
from .readers import ClassTable
from .sampling import (
    STATS_SECTIONS,
    STATS_SEED,
    AtlasTiles,
    AtlasView,
    MixedTiles,
    TileSampler,
    model_view,
    shared_atlas,
)

MIN_INSTANCE_PX = 16
DEFAULT_ATLAS_FRACTION = 0.7


def targets_from_classes(classes: np.ndarray) -> dict[str, torch.Tensor]:
    """Mask R-CNN targets: one instance per connected piece of each class present."""
    masks, labels, boxes = [], [], []
    for cls in np.unique(classes):
        if cls == 0:
            continue
        pieces, n = ndi.label(classes == cls)
        for i, sl in enumerate(ndi.find_objects(pieces), start=1):
            mask = pieces == i
            if mask.sum() < MIN_INSTANCE_PX:
                continue
            masks.append(mask)
            labels.append(int(cls))
            boxes.append([sl[1].start, sl[0].start, sl[1].stop, sl[0].stop])
    size = classes.shape
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "masks": torch.from_numpy(np.stack(masks)).to(torch.uint8)
        if masks
        else torch.zeros((0, *size), dtype=torch.uint8),
        "semantic": torch.from_numpy(classes.astype(np.int64)),  # for a semantic branch; Mask R-CNN ignores it
    }


def channel_stats(examples: list[Example]) -> tuple[list[float], list[float], np.ndarray]:
    """Per-channel mean and std (the card's normalisation) and the glass colour used for padding."""
    flat = np.concatenate([e.image.reshape(e.image.shape[0], -1) for e in examples], axis=1)
    glass = np.concatenate([e.image[:, e.classes == 0] for e in examples], axis=1)
    colour = np.median(glass, axis=1) if glass.size else flat.mean(axis=1)
    return flat.mean(axis=1).tolist(), np.maximum(flat.std(axis=1), 1e-3).tolist(), colour.astype(np.float32)


def class_counts(examples: list[Example], n_classes: int) -> np.ndarray:
    """Pixels of each class over the sections."""
    pixels = np.concatenate([e.classes.ravel() for e in examples])
    return np.bincount(pixels, minlength=n_classes)[:n_classes].astype(float)


def weights_from_counts(counts: np.ndarray) -> torch.Tensor:
    """Per-class weights of the per-pixel loss: 1 / sqrt(pixel share), mean 1 over the classes
    present; classes absent from training weigh nothing. `counts` may be pixels or shares."""
    weights = np.where(counts > 0, 1.0 / np.sqrt(np.where(counts > 0, counts, 1) / counts.sum()), 0.0)
    return torch.tensor(weights / weights[counts > 0].mean(), dtype=torch.float32)


def semantic_weights(examples: list[Example], n_classes: int) -> torch.Tensor:
    """The per-pixel loss's class weights of one set of sections (`weights_from_counts`)."""
    return weights_from_counts(class_counts(examples, n_classes))


Sources = list[tuple[float, list[Example]]]
"""The sections tiles come from, by source (real, atlas), each with its share of the tiles."""


def mixed_weights(sources: Sources, n_classes: int) -> torch.Tensor:
    """Class weights of tiles drawn from several sources: each source's pixel shares weighted by its share of tiles."""
    if len(sources) == 1:
        return semantic_weights(sources[0][1], n_classes)
    shares = [class_counts(examples, n_classes) for _, examples in sources]
    return weights_from_counts(sum(w * c / c.sum() for (w, _), c in zip(sources, shares)))


def mixed_stats(sources: Sources, mode: str) -> tuple[list[float], list[float], np.ndarray]:
    """The card's normalisation over the sources (each weighted by its share of tiles) and the
    first source's glass colour for padding; in luminance mode the glass is 1 by definition."""
    mean, std, glass = channel_stats(sources[0][1])
    if len(sources) > 1:
        flats = [
            np.concatenate([e.image.reshape(e.image.shape[0], -1) for e in examples], axis=1) for _, examples in sources
        ]
        means = [f.mean(axis=1) for f in flats]
        total = sum(w * m for (w, _), m in zip(sources, means))
        var = sum(w * (f.var(axis=1) + (m - total) ** 2) for (w, _), f, m in zip(sources, flats, means))
        mean, std = total.tolist(), np.maximum(np.sqrt(var), 1e-3).tolist()
    return mean, std, np.ones(1, np.float32) if mode == "luminance" else glass


def lr_at(step: int, steps: int, peak: float, warmup: int = 30) -> float:
    """Linear warm-up then cosine decay to 5 % of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(steps - warmup, 1)
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))


def validate(model: torch.nn.Module, card: ModelCard, sections: list[Example], device: torch.device) -> float:
    """Mean Dice over the classes in the held-out sections' truth, pooled over sections, with each
    section segmented as `sebre segment` would (infer.predict_image)."""
    n = len(card.classes)
    model.eval()
    matrix = sum(confusion(predict_image(model, card, s.image, device=device), s.classes, n) for s in sections)
    model.train()
    dice, _ = dice_iou(matrix)
    present = matrix.sum(axis=1)[1:] > 0
    return float(np.mean(dice[1:][present]))


CURVE_FIELDS = ["step", "loss", "lr", "val_dice", "seconds"]


def curve_paths(out: str | Path) -> tuple[Path, Path]:
    """Where the curves of the checkpoint `out` go: `<stem>.curves.csv` and `.png` beside it."""
    out = Path(out)
    return out.with_name(out.stem + ".curves.csv"), out.with_name(out.stem + ".curves.png")


def write_curves(out: str | Path, rows: list[dict]) -> None:
    """The training loss and the validation Dice by step, as CSV and as a two-panel plot."""
    csv_path, png_path = curve_paths(out)
    csv_path.parent.mkdir(parents=True, exist_ok=True)  # the first curves come before the first checkpoint
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, CURVE_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    fig = Figure(figsize=(6, 5))
    top, bottom = fig.subplots(2, 1, sharex=True)
    top.plot([r["step"] for r in rows], [r["loss"] for r in rows], color="tab:blue")
    top.set_ylabel("training loss")
    val = [r for r in rows if r["val_dice"] != ""]
    bottom.plot([r["step"] for r in val], [r["val_dice"] for r in val], "o-", color="tab:green")
    bottom.set_ylabel("validation mean Dice")
    bottom.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)


def semantic_target(classes: np.ndarray) -> dict[str, torch.Tensor]:
    """The per-pixel target alone, for a semantic branch trained without the Mask R-CNN losses."""
    return {"semantic": torch.from_numpy(classes.astype(np.int64))}


class TileBatches(torch.utils.data.IterableDataset):
    """Endless batches of (images, targets) from a tile source (sampling.py). In the main process
    they come from `rng`; each DataLoader worker draws from its own generator seeded with (seed,
    worker id), so a run repeats for a given seed and worker count while a GPU is fed by several
    CPU cores. Without `instances` the targets hold the per-pixel map alone."""

    def __init__(self, sampler, batch_size: int, rng: np.random.Generator, seed: int, instances: bool = True):
        self.sampler, self.batch_size, self.rng, self.seed = sampler, batch_size, rng, seed
        self.targets = targets_from_classes if instances else semantic_target

    def __iter__(self):
        worker = torch.utils.data.get_worker_info()
        rng = self.rng if worker is None else np.random.default_rng([self.seed, worker.id])
        while True:
            tiles = [self.sampler.tile(rng) for _ in range(self.batch_size)]
            yield [torch.from_numpy(im) for im, _ in tiles], [self.targets(c) for _, c in tiles]


def batches(sampler, batch_size: int, rng: np.random.Generator, seed: int, workers: int, instances: bool = True):
    """An iterator over TileBatches, prepared by `workers` processes (0: in this one)."""
    stream = TileBatches(sampler, batch_size, rng, seed, instances)
    if not workers:
        return iter(stream)
    return iter(
        torch.utils.data.DataLoader(
            stream, batch_size=None, num_workers=workers, prefetch_factor=4, persistent_workers=True
        )
    )


def train_step(model, optimiser, batch, lr: float, dev) -> float:
    """One optimiser step on a batch of (images, targets); returns the loss."""
    images = [im.to(dev, non_blocking=True) for im in batch[0]]
    targets = [{k: v.to(dev) for k, v in t.items()} for t in batch[1]]
    for group in optimiser.param_groups:
        group["lr"] = lr
    loss = sum(model(images, targets).values())
    optimiser.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
    optimiser.step()
    return loss.item()


def _progress(enabled: bool) -> Progress:
    columns = (
        TextColumn("[bold]train"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.3f}"),
        TextColumn("val Dice {task.fields[val]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    return Progress(*columns, disable=not enabled, transient=True)


@dataclass(frozen=True)
class TrainOptions:
    """How to train: the network, the µm/px and tiles it works at, the schedule and the split.

    Sections named in `val_sections` (or a `val_fraction` of them, drawn with `seed`) are held out,
    segmented every `val_every` steps and at the end, and the checkpoint kept is the one with the
    best mean Dice on them (else the last). `test_sections` are left out altogether and listed in
    the card, for a score neither training nor selection saw. `init` is a torchvision weights file
    to start from. `workers` processes prepare the augmented tiles (0: this one), which a GPU
    needs. `semantic` adds the per-pixel branch (model.RegionMaskRCNN) whose maps give the regions.

    `input` "luminance" trains one model for any stain or modality (model_input.py). An `atlas`
    folder (or, when only `atlas_fraction` is given, $SEBRE_ATLAS) adds sections generated by
    `atlas_recipe` (at the model's µm/px) as a share `atlas_fraction` of the tiles (default
    DEFAULT_ATLAS_FRACTION); at 1.0 the real sections only validate. `augmentation` defaults to
    the input's (`Augmentation()`, or `Augmentation.luminance()`). `instance_loss` weighs the Mask
    R-CNN losses beside the semantic branch's; at 0 only the semantic branch learns (its maps give
    the regions; boxes and instances stay untrained), a step about half as costly on a CPU."""

    arch: str = "tiny_fpn"
    pixel_size: float = 16.0
    tile_size: int = 256
    overlap: int = 64
    steps: int = 400
    batch_size: int = 4
    lr: float = 2e-3
    seed: int = 0
    device: str | None = None
    val_sections: tuple[str, ...] = ()
    val_fraction: float | None = None
    test_sections: tuple[str, ...] = ()
    val_every: int = 100
    init: str | Path | None = None
    augmentation: Augmentation | None = None
    workers: int = 0
    semantic: bool = True
    progress: bool = True
    input: str = "channels"
    atlas: str | Path | None = None
    atlas_fraction: float | None = None
    atlas_recipe: SectionRecipe = field(default_factory=SectionRecipe)
    instance_loss: float = 1.0

    def check(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise UserError(f"unknown architecture arch={self.arch!r}; choose one of {', '.join(ARCHITECTURES)}")
        if not 0 <= self.overlap < self.tile_size:
            raise UserError(
                f"overlap {self.overlap} must be at least 0 and smaller than the tile size {self.tile_size}; "
                "pass a smaller overlap=PX"
            )
        if self.input not in INPUT_MODES:
            raise UserError(f"unknown input={self.input!r}; choose one of {', '.join(INPUT_MODES)}")
        if self.atlas_fraction is not None and not 0 <= self.atlas_fraction <= 1:
            raise UserError(f"atlas_fraction={self.atlas_fraction} must be between 0 and 1 (the share of atlas tiles)")
        if self.instance_loss < 0 or (self.instance_loss != 1.0 and not self.semantic):
            raise UserError(
                f"instance_loss={self.instance_loss} weighs Mask R-CNN's losses against the semantic "
                "branch's: give 0 or more, with semantic=True"
            )

    @property
    def atlas_share(self) -> float:
        """The share of tiles cut from the atlas: 0 unless an atlas or a fraction is given."""
        if self.atlas_fraction is not None:
            return float(self.atlas_fraction)
        return DEFAULT_ATLAS_FRACTION if self.atlas is not None else 0.0

    @property
    def photometry(self) -> Augmentation:
        """The augmentation: as given, else the input mode's."""
        if self.augmentation is not None:
            return self.augmentation
        return Augmentation.luminance() if self.input == "luminance" else Augmentation()

    @property
    def section_recipe(self) -> SectionRecipe:
        """The atlas recipe at the model's µm/px."""
        return replace(self.atlas_recipe, pixel_size_um=self.pixel_size)


@dataclass
class Curves:
    """What the loop measured: a row per logged step, and the best validation step with its weights."""

    rows: list[dict] = field(default_factory=list)
    best_dice: float = -1.0
    best_step: int = 0
    best_state: dict | None = None


@dataclass(frozen=True)
class TrainingSplit:
    """The sections by use: labelled training sections, validation and test, and their classes."""

    train: list[Example]
    val: list[Example]
    test: list[Example]
    table: ClassTable
    channels: list[str]


def split_sections(data: TrainingData, options: TrainOptions) -> TrainingSplit:
    """Read the sections at the model's µm/px and split them by whole sections. With atlas tiles
    only (atlas_fraction=1.0) none trains: those held out validate (all but the test ones if none are named)."""
    found = load_examples(data, options.pixel_size)
    tested = split_by_section(found.examples, list(options.test_sections), what="test")
    held = list(options.val_sections) or options.val_fraction
    if options.atlas_share == 1.0:
        validated = Split([], tested.kept)
        if held:
            validated = split_by_section(tested.kept, held, options.seed, keep_one=False)
        return TrainingSplit([], validated.held_out, tested.held_out, found.table, found.channels)
    validated = split_by_section(tested.kept, held, options.seed)
    if not any(e.classes.any() for e in validated.kept):
        raise UserError(
            f"{data.inputs[0]}: the annotations hold no labelled pixels at {options.pixel_size} µm/px; check them "
            "or pixel_size=UM"
        )
    return TrainingSplit(
        [e for e in validated.kept if e.classes.any()], validated.held_out, tested.held_out, found.table, found.channels
    )


def atlas_tiles(options: TrainOptions, split: TrainingSplit) -> AtlasTiles | None:
    """The source of atlas tiles the options ask for (None without one), its classes checked against the data's."""
    if not options.atlas_share:
        return None
    folder = str(atlas_folder(options.atlas))
    names = shared_atlas(folder).class_names
    if list(names) != list(split.table.names):
        raise UserError(
            f"atlas={folder}: its classes {list(names[1:])} differ from the data's "
            f"{split.table.names[1:]}; train on sections labelled in the atlas's classes"
        )
    if options.input == "channels" and len(split.channels) not in (1, 3):
        raise UserError(
            f"atlas={folder}: generated sections are RGB or grey, the data has {len(split.channels)} "
            "channels; pass input='luminance'"
        )
    view = AtlasView(options.input, len(split.channels))
    return AtlasTiles(folder, options.section_recipe, options.tile_size, options.photometry, view)


def tile_source(real: list[Example], atlas: AtlasTiles | None, glass: np.ndarray, options: TrainOptions):
    """Real tiles (TileSampler), atlas tiles, or both mixed by atlas_fraction."""
    sampler = TileSampler(real, options.tile_size, glass, options.photometry) if real else None
    return sampler if atlas is None else MixedTiles(sampler, atlas, options.atlas_share)


def generator_record(options: TrainOptions, atlas: AtlasTiles | None) -> dict:
    """The card's note of the input mode and the atlas sections' recipe; nothing for a plain run,
    whose card then reads as before these options existed."""
    record = {"input": options.input} if options.input != "channels" or atlas else {}
    if options.instance_loss != 1.0:
        record["instance_loss"] = options.instance_loss
    if atlas is not None:
        record["atlas"] = {
            "version": ATLAS_VERSION,
            "folder": atlas.folder,
            "fraction": options.atlas_share,
            "recipe": atlas.recipe.to_dict(),
            "stats_sections": STATS_SECTIONS,
            "stats_seed": STATS_SEED,
        }
    return record


def model_card(
    data: TrainingData,
    options: TrainOptions,
    split: TrainingSplit,
    mean: list[float],
    std: list[float],
    atlas: AtlasTiles | None = None,
) -> ModelCard:
    """The card of the model about to be trained: classes, input and its normalisation, tiles and the recipe."""
    o = options
    training = {
        "data": [str(d) for d in data.inputs],
        **({"rois": [str(r) for r in data.rois]} if data.rois else {}),
        "steps": o.steps,
        "batch_size": o.batch_size,
        "lr": o.lr,
        "schedule": "linear warm-up 30 steps, cosine to 5 %",
        "seed": o.seed,
        "sampling": "class-balanced",
        "augmentation": o.photometry.to_dict(),
        "workers": o.workers,
        "train_sections": [e.name for e in split.train],
        "val_sections": [e.name for e in split.val],
        "test_sections": [e.name for e in split.test],
        **generator_record(o, atlas),
    }
    channels = LUMINANCE if o.input == "luminance" else split.channels
    return ModelCard(
        o.arch,
        split.table.names,
        split.table.colors,
        o.pixel_size,
        channels,
        mean,
        std,
        o.tile_size,
        o.overlap,
        training=training,
        semantic=o.semantic,
        input=o.input,
    )


def fit(
    model,
    optimiser,
    stream,
    card: ModelCard,
    held_out: list[Example],
    out: str | Path,
    options: TrainOptions,
    dev: torch.device,
) -> Curves:
    """The training loop: a step per batch, the loss logged every 25 steps, the held-out sections
    scored every `val_every` steps; the best model so far is written to `out` as it is found."""
    curves, window, started = Curves(), [], time.perf_counter()
    steps = options.steps
    with _progress(options.progress) as bar:
        task = bar.add_task("train", total=steps, loss=float("nan"), val="-")
        for step in range(1, steps + 1):
            window.append(train_step(model, optimiser, next(stream), lr_at(step - 1, steps, options.lr), dev))
            validating = bool(held_out) and (step % options.val_every == 0 or step == steps)
            if step % 25 and not validating and step != steps:
                bar.update(task, advance=1, loss=window[-1])
                continue
            row = {
                "step": step,
                "loss": round(float(np.mean(window)), 4),
                "lr": round(lr_at(step - 1, steps, options.lr), 7),
                "val_dice": "",
                "seconds": round(time.perf_counter() - started, 1),
            }
            window = []
            if validating:
                row["val_dice"] = round(validate(model, card, held_out, dev), 4)
                if row["val_dice"] > curves.best_dice:
                    curves.best_dice, curves.best_step = row["val_dice"], step
                    curves.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                    save_checkpoint(out, model, card)  # a run killed later still leaves its best model
            curves.rows.append(row)
            write_curves(out, curves.rows)
            bar.update(
                task, advance=1, loss=row["loss"], val=row["val_dice"] if validating else bar.tasks[task].fields["val"]
            )
    return curves


def train(data: TrainingData, out: str | Path, options: TrainOptions = TrainOptions()) -> ModelCard:
    """Train a Mask R-CNN on annotated sections and write the checkpoint with its card, and its
    loss and validation curves beside it (`curve_paths`).

    1. read the sections at the model's µm/px and split them into training, validation and test;
       the training ones as the model sees them (`input`), and the atlas if asked for;
    2. the card: classes, input normalisation (over real and atlas sections), tiles and the recipe;
    3. the model (from `init` weights if given) and its optimiser;
    4. an endless stream of augmented tile batches;
    5. the loop (`fit`), keeping the best validated weights;
    6. the card completed with the curves and times, written with those weights."""
    options.check()
    split = split_sections(data, options)
    atlas = atlas_tiles(options, split)
    real = model_view(split.train, options.input)
    share = options.atlas_share
    sources = ([(1.0 - share, real)] if real else []) + ([(share, atlas.sample())] if atlas else [])
    mean, std, glass = mixed_stats(sources, options.input)
    card = model_card(data, options, split, mean, std, atlas)
    torch.manual_seed(options.seed)
    rng = np.random.default_rng(options.seed)
    dev = pick_device(options.device)
    model = build_model(card)
    if options.init is not None:
        taken = load_init(model, options.init)
        card.training["init"] = {
            "file": Path(options.init).name,
            "tensors_taken": taken.taken,
            "tensors_in_model": taken.total,
        }
    if options.semantic:  # rare regions weigh more per pixel, so a small hypothalamus is not lost to cortex
        model.class_weights = mixed_weights(sources, len(card.classes))
        model.instance_weight = options.instance_loss
    model = model.to(dev).train()
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=options.lr, weight_decay=1e-4)
    stream = batches(
        tile_source(real, atlas, glass, options),
        options.batch_size,
        rng,
        options.seed,
        options.workers,
        instances=options.instance_loss > 0,
    )
    started, cpu_started = time.perf_counter(), time.process_time()
    curves = fit(model, optimiser, stream, card, split.val, out, options, dev)
    if curves.best_state is not None:
        model.load_state_dict(curves.best_state)
        card.training.update(best_step=curves.best_step, val_dice=curves.best_dice)
    rows = curves.rows
    card.training.update(
        seconds=round(time.perf_counter() - started, 1),
        cpu_seconds=round(time.process_time() - cpu_started, 1),
        final_loss=rows[-1]["loss"],
        loss_curve=[[r["step"], r["loss"], r["seconds"]] for r in rows],
        val_curve=[[r["step"], r["val_dice"]] for r in rows if r["val_dice"] != ""],
    )
    save_checkpoint(out, model, card)
    return card
