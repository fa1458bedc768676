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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from scipy import ndimage as ndi

from .augment import Augmentation, photometric, random_geometry, warp
from .datasets import Example, TrainingData, load_examples, split_by_section
from .errors import UserError
from .infer import predict_image
from .metrics import confusion, dice_iou
from .readers import ClassTable
from .model import ARCHITECTURES, ModelCard, build_model, load_init, pick_device, save_checkpoint

MIN_INSTANCE_PX = 16
# Of the tiles of sections that fit a tile, the share that shows them cut by the tile's edge at any
# offset: `segment`'s tile grid cuts sections anywhere, so the model must know them in part too.
CUT_SECTIONS = 0.5


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
        "masks": torch.from_numpy(np.stack(masks)).to(torch.uint8) if masks else torch.zeros((0, *size), dtype=torch.uint8),
        "semantic": torch.from_numpy(classes.astype(np.int64)),  # for a semantic branch; Mask R-CNN ignores it
    }


class TileSampler:
    """Training tiles. When every section's labelled extent fits in a tile at any angle and zoom,
    each tile shows one section, as SeBRe trained: every region is then one whole object among its
    neighbours, the context that tells thalamus from midbrain. Half of those tiles show it whole,
    half cut by the tile's edge (CUT_SECTIONS). Larger sections give class-balanced tiles: a class drawn uniformly among those
    in the training set, then one of its pixels drawn uniformly over all sections, placed anywhere
    in the tile's middle three quarters, so a region found in few sections is seen as often as
    cortex."""

    def __init__(self, examples: list[Example], size: int, glass: np.ndarray, aug: Augmentation):
        self.examples, self.size, self.glass, self.aug = examples, size, glass, aug
        self.counts = np.stack([np.bincount(e.classes.ravel(), minlength=256) for e in examples]).astype(float)
        self.classes = np.flatnonzero(self.counts[:, 1:].sum(axis=0)) + 1
        self.extents = [_labelled_extent(e.classes) for e in examples]
        # zoomed in by up to aug.scale, a section must still fit: its diagonal times the zoom
        self.whole = [ext is not None and ext[2] * max(aug.scale, 1.0) <= size for ext in self.extents]

    def centre(self, rng: np.random.Generator) -> tuple[int, int, int, float]:
        """(example index, y, x, jitter): the tile's centre in a section, and how far to move it."""
        if all(self.whole):
            ex = int(rng.integers(len(self.examples)))
            y, x, diagonal = self.extents[ex]
            if rng.random() < CUT_SECTIONS:  # as `segment`'s tile grid cuts a section: anywhere, in part
                return ex, y, x, self.size / 2
            return ex, y, x, (self.size / max(self.aug.scale, 1.0) - diagonal) / 2
        cls = int(rng.choice(self.classes))
        ex = int(rng.choice(len(self.examples), p=self.counts[:, cls] / self.counts[:, cls].sum()))
        classes = self.examples[ex].classes
        pixels = np.flatnonzero(classes.ravel() == cls)
        y, x = divmod(int(pixels[rng.integers(len(pixels))]), classes.shape[1])
        return ex, y, x, 3 * self.size / 8

    def tile(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """An augmented (image, classes) tile: geometry sampled straight from the section, then photometry."""
        ex, y, x, jitter = self.centre(rng)
        matrix, field = random_geometry(self.aug, self.size, rng)
        shift = matrix @ rng.uniform(-jitter, jitter, 2)
        example = self.examples[ex]
        image, classes = warp(example.image, example.classes, matrix, (y + shift[0], x + shift[1]),
                              (self.size, self.size), self.glass, field)
        return photometric(image, self.aug, rng), classes


def _labelled_extent(classes: np.ndarray) -> tuple[float, float, float] | None:
    """(y, x) centre and diagonal of the box around a section's labelled pixels; None if unlabelled."""
    ys, xs = np.nonzero(classes.any(axis=1))[0], np.nonzero(classes.any(axis=0))[0]
    if not len(ys):
        return None
    return (ys[0] + ys[-1]) / 2, (xs[0] + xs[-1]) / 2, math.hypot(ys[-1] - ys[0] + 1, xs[-1] - xs[0] + 1)


def channel_stats(examples: list[Example]) -> tuple[list[float], list[float], np.ndarray]:
    """Per-channel mean and std (the card's normalisation) and the glass colour used for padding."""
    flat = np.concatenate([e.image.reshape(e.image.shape[0], -1) for e in examples], axis=1)
    glass = np.concatenate([e.image[:, e.classes == 0] for e in examples], axis=1)
    colour = np.median(glass, axis=1) if glass.size else flat.mean(axis=1)
    return flat.mean(axis=1).tolist(), np.maximum(flat.std(axis=1), 1e-3).tolist(), colour.astype(np.float32)


def semantic_weights(examples: list[Example], n_classes: int) -> torch.Tensor:
    """Per-class weights of the per-pixel loss: 1 / sqrt(pixel share), mean 1 over the classes
    present; classes absent from training weigh nothing."""
    counts = np.bincount(np.concatenate([e.classes.ravel() for e in examples]), minlength=n_classes)[:n_classes].astype(float)
    weights = np.where(counts > 0, 1.0 / np.sqrt(np.maximum(counts, 1) / counts.sum()), 0.0)
    return torch.tensor(weights / weights[counts > 0].mean(), dtype=torch.float32)


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


class TileBatches(torch.utils.data.IterableDataset):
    """Endless batches of (images, targets) from a TileSampler. In the main process they come from
    `rng`; each DataLoader worker draws from its own generator seeded with (seed, worker id), so a
    run repeats for a given seed and worker count while a GPU is fed by several CPU cores."""

    def __init__(self, sampler: TileSampler, batch_size: int, rng: np.random.Generator, seed: int):
        self.sampler, self.batch_size, self.rng, self.seed = sampler, batch_size, rng, seed

    def __iter__(self):
        worker = torch.utils.data.get_worker_info()
        rng = self.rng if worker is None else np.random.default_rng([self.seed, worker.id])
        while True:
            tiles = [self.sampler.tile(rng) for _ in range(self.batch_size)]
            yield [torch.from_numpy(im) for im, _ in tiles], [targets_from_classes(c) for _, c in tiles]


def batches(sampler: TileSampler, batch_size: int, rng: np.random.Generator, seed: int, workers: int):
    """An iterator over TileBatches, prepared by `workers` processes (0: in this one)."""
    stream = TileBatches(sampler, batch_size, rng, seed)
    if not workers:
        return iter(stream)
    return iter(torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers, prefetch_factor=4, persistent_workers=True))


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
    columns = (TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]:.3f}"),
               TextColumn("val Dice {task.fields[val]}"), TimeElapsedColumn(), TimeRemainingColumn())
    return Progress(*columns, disable=not enabled, transient=True)


@dataclass(frozen=True)
class TrainOptions:
    """How to train: the network, the µm/px and tiles it works at, the schedule and the split.

    Sections named in `val_sections` (or a `val_fraction` of them, drawn with `seed`) are held out,
    segmented every `val_every` steps and at the end, and the checkpoint kept is the one with the
    best mean Dice on them (else the last). `test_sections` are left out altogether and listed in
    the card, for a score neither training nor selection saw. `init` is a torchvision weights file
    to start from. `workers` processes prepare the augmented tiles (0: this one), which a GPU
    needs. `semantic` adds the per-pixel branch (model.RegionMaskRCNN) whose maps give the regions."""

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
    augmentation: Augmentation = field(default_factory=Augmentation)
    workers: int = 0
    semantic: bool = True
    progress: bool = True

    def check(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise UserError(f"unknown architecture arch={self.arch!r}; choose one of {', '.join(ARCHITECTURES)}")
        if not 0 <= self.overlap < self.tile_size:
            raise UserError(f"overlap {self.overlap} must be at least 0 and smaller than the tile size {self.tile_size}; "
                            "pass a smaller overlap=PX")


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
    """Read the sections at the model's µm/px and split them by whole sections."""
    found = load_examples(data, options.pixel_size)
    tested = split_by_section(found.examples, list(options.test_sections), what="test")
    validated = split_by_section(tested.kept, list(options.val_sections) or options.val_fraction, options.seed)
    if not any(e.classes.any() for e in validated.kept):
        raise UserError(f"{data.inputs[0]}: the annotations hold no labelled pixels at {options.pixel_size} µm/px; check them "
                        "or pixel_size=UM")
    return TrainingSplit([e for e in validated.kept if e.classes.any()], validated.held_out, tested.held_out, found.table,
                         found.channels)


def model_card(data: TrainingData, options: TrainOptions, split: TrainingSplit, mean: list[float], std: list[float]) -> ModelCard:
    """The card of the model about to be trained: classes, normalisation, tiles and the recipe."""
    o = options
    training = {"data": [str(d) for d in data.inputs], **({"rois": [str(r) for r in data.rois]} if data.rois else {}),
                "steps": o.steps, "batch_size": o.batch_size, "lr": o.lr, "schedule": "linear warm-up 30 steps, cosine to 5 %",
                "seed": o.seed, "sampling": "class-balanced", "augmentation": o.augmentation.to_dict(), "workers": o.workers,
                "train_sections": [e.name for e in split.train], "val_sections": [e.name for e in split.val],
                "test_sections": [e.name for e in split.test]}
    return ModelCard(o.arch, split.table.names, split.table.colors, o.pixel_size, split.channels, mean, std, o.tile_size,
                     o.overlap, training=training, semantic=o.semantic)


def fit(model, optimiser, stream, card: ModelCard, held_out: list[Example], out: str | Path, options: TrainOptions,
        dev: torch.device) -> Curves:
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
            row = {"step": step, "loss": round(float(np.mean(window)), 4), "lr": round(lr_at(step - 1, steps, options.lr), 7),
                   "val_dice": "", "seconds": round(time.perf_counter() - started, 1)}
            window = []
            if validating:
                row["val_dice"] = round(validate(model, card, held_out, dev), 4)
                if row["val_dice"] > curves.best_dice:
                    curves.best_dice, curves.best_step = row["val_dice"], step
                    curves.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                    save_checkpoint(out, model, card)  # a run killed later still leaves its best model
            curves.rows.append(row)
            write_curves(out, curves.rows)
            bar.update(task, advance=1, loss=row["loss"], val=row["val_dice"] if validating else bar.tasks[task].fields["val"])
    return curves


def train(data: TrainingData, out: str | Path, options: TrainOptions = TrainOptions()) -> ModelCard:
    """Train a Mask R-CNN on annotated sections and write the checkpoint with its card, and its
    loss and validation curves beside it (`curve_paths`).

    1. read the sections at the model's µm/px and split them into training, validation and test;
    2. the card: classes, channel normalisation, tiles and the recipe;
    3. the model (from `init` weights if given) and its optimiser;
    4. an endless stream of augmented tile batches;
    5. the loop (`fit`), keeping the best validated weights;
    6. the card completed with the curves and times, written with those weights."""
    options.check()
    split = split_sections(data, options)
    examples = split.train
    mean, std, glass = channel_stats(examples)
    card = model_card(data, options, split, mean, std)
    torch.manual_seed(options.seed)
    rng = np.random.default_rng(options.seed)
    dev = pick_device(options.device)
    model = build_model(card)
    if options.init is not None:
        taken = load_init(model, options.init)
        card.training["init"] = {"file": Path(options.init).name, "tensors_taken": taken.taken, "tensors_in_model": taken.total}
    if options.semantic:  # rare regions weigh more per pixel, so a small hypothalamus is not lost to cortex
        model.class_weights = semantic_weights(examples, len(card.classes))
    model = model.to(dev).train()
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=options.lr, weight_decay=1e-4)
    sampler = TileSampler(examples, options.tile_size, glass, options.augmentation)
    stream = batches(sampler, options.batch_size, rng, options.seed, options.workers)
    started, cpu_started = time.perf_counter(), time.process_time()
    curves = fit(model, optimiser, stream, card, split.val, out, options, dev)
    if curves.best_state is not None:
        model.load_state_dict(curves.best_state)
        card.training.update(best_step=curves.best_step, val_dice=curves.best_dice)
    rows = curves.rows
    card.training.update(seconds=round(time.perf_counter() - started, 1), cpu_seconds=round(time.process_time() - cpu_started, 1),
                         final_loss=rows[-1]["loss"], loss_curve=[[r["step"], r["loss"], r["seconds"]] for r in rows],
                         val_curve=[[r["step"], r["val_dice"]] for r in rows if r["val_dice"] != ""])
    save_checkpoint(out, model, card)
    return card
