"""Training: annotated slides in, one checkpoint with its model card out.

A training set is a list of `Example`s (an image at the model's µm/px and its class map). Batches
are random tiles drawn class-balanced from them, augmented, and turned into Mask R-CNN targets with
one instance per connected piece of each class (SeBRe's region rule, tile by tile).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from scipy import ndimage as ndi
from skimage.transform import resize

from .errors import UserError
from .labels import class_lut, open_labels, read_plane
from .model import ARCHITECTURES, ModelCard, build_model, pick_device, save_checkpoint
from .slide import open_slide, pick_level
from .tissue import to_unit

MIN_INSTANCE_PX = 16


@dataclass
class Example:
    image: np.ndarray  # (C, H, W) float32 in [0, 1]
    classes: np.ndarray  # (H, W) uint8
    name: str


@dataclass
class ClassTable:
    names: list[str]
    colors: list[tuple[int, int, int]]


def _resample(image: np.ndarray, classes: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """Bring an example to the model's µm/px when no pyramid level is within 10 %."""
    if abs(factor - 1) <= 0.1:
        return image, classes
    shape = (max(1, round(classes.shape[0] * factor)), max(1, round(classes.shape[1] * factor)))
    image = resize(image, (image.shape[0], *shape), order=1, anti_aliasing=factor < 1, preserve_range=True).astype(np.float32)
    classes = resize(classes, shape, order=0, anti_aliasing=False, preserve_range=True).astype(np.uint8)
    return image, classes


def class_table_of(info) -> ClassTable:
    """Class names and colours from a label layer's properties (class index -> name)."""
    names, colors = {0: "background"}, {0: (0, 0, 0)}
    for value, p in info.properties.items():
        if "class" in p:
            cls = int(p["class"])
            names.setdefault(cls, str(p.get("name", f"class{cls}")))
            colors.setdefault(cls, info.colors.get(value, (255, 255, 255)))
    n = max(names) + 1
    return ClassTable([names.get(i, f"class{i}") for i in range(n)], [colors.get(i, (255, 255, 255)) for i in range(n)])


def examples_from_zarr(url: str, pixel_size_um: float, label_name: str | None = None) -> tuple[list[Example], ClassTable, list[str]]:
    """Every plane of an OME-Zarr store with a label layer, at the level nearest `pixel_size_um`."""
    slide = open_slide(url)
    names = slide.label_names()
    if not names:
        raise UserError(f"{url}: no label layer to train on; add one (labels/<name>) or pass images with RoiSet.zip annotations")
    info = open_labels(slide, label_name or names[0])
    level = pick_level(slide, pixel_size_um)
    factor = slide.pixel_size(level) / pixel_size_um
    examples = []
    for z in range(slide.n_planes):
        values = read_plane(info, slide, level, z)
        classes = class_lut(info, int(values.max()))[values].astype(np.uint8)
        image = to_unit(np.asarray(slide.plane(level, z)))
        image, classes = _resample(image, classes, factor)
        examples.append(Example(image, classes, f"{Path(url).name}[z={z}]"))
    return examples, class_table_of(info), slide.channels


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
    }


def augment(image: np.ndarray, classes: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Flips, quarter turns, brightness/contrast, stain and greyscale jitter: sections lie any way
    up on a slide, and stains differ between labs and batches."""
    k = int(rng.integers(4))
    image, classes = np.rot90(image, k, axes=(1, 2)), np.rot90(classes, k)
    if rng.random() < 0.5:
        image, classes = image[:, :, ::-1], classes[:, ::-1]
    if image.shape[0] == 3 and rng.random() < 0.2:
        image = np.repeat(image.mean(axis=0, keepdims=True), 3, axis=0)
    gain = rng.uniform(0.85, 1.15) * rng.uniform(0.9, 1.1, (image.shape[0], 1, 1))
    image = np.clip(image * gain + rng.uniform(-0.08, 0.08), 0, 1)
    return np.ascontiguousarray(image, dtype=np.float32), np.ascontiguousarray(classes)


def sample_tile(ex: Example, size: int, fill: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A tile around a pixel of a class chosen uniformly among those present (class-balanced)."""
    present = np.unique(ex.classes)
    present = present[present > 0]
    cls = rng.choice(present) if len(present) else 0
    ys, xs = np.nonzero(ex.classes == cls)
    i = int(rng.integers(len(ys)))
    y0 = int(ys[i]) - int(rng.integers(size // 8, size - size // 8))
    x0 = int(xs[i]) - int(rng.integers(size // 8, size - size // 8))
    image = np.empty((ex.image.shape[0], size, size), np.float32)
    image[:] = fill[:, None, None]
    classes = np.zeros((size, size), np.uint8)
    h, w = ex.classes.shape
    sy, sx = slice(max(y0, 0), min(y0 + size, h)), slice(max(x0, 0), min(x0 + size, w))
    dy, dx = slice(sy.start - y0, sy.stop - y0), slice(sx.start - x0, sx.stop - x0)
    image[:, dy, dx] = ex.image[:, sy, sx]
    classes[dy, dx] = ex.classes[sy, sx]
    return image, classes


def channel_stats(examples: list[Example]) -> tuple[list[float], list[float], np.ndarray]:
    """Per-channel mean and std (the card's normalisation) and the glass colour used for padding."""
    flat = np.concatenate([e.image.reshape(e.image.shape[0], -1) for e in examples], axis=1)
    glass = np.concatenate([e.image[:, e.classes == 0] for e in examples], axis=1)
    fill = np.median(glass, axis=1) if glass.size else flat.mean(axis=1)
    return flat.mean(axis=1).tolist(), np.maximum(flat.std(axis=1), 1e-3).tolist(), fill.astype(np.float32)


def lr_at(step: int, steps: int, peak: float, warmup: int = 30) -> float:
    """Linear warm-up then cosine decay to 5 % of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(steps - warmup, 1)
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))


def train(data: list[str], out: str | Path, *, arch: str = "tiny_fpn", steps: int = 400, pixel_size: float = 16.0,
          tile_size: int = 256, overlap: int = 64, batch_size: int = 4, lr: float = 2e-3, label_name: str | None = None,
          seed: int = 0, device: str | None = None, progress: bool = True) -> ModelCard:
    """Train a Mask R-CNN on annotated OME-Zarr slides and write the checkpoint with its card."""
    if arch not in ARCHITECTURES:
        raise UserError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    if not data:
        raise UserError("no training data given; pass one or more OME-Zarr stores with a label layer")
    examples, table, channels = [], None, None
    for url in data:
        ex, t, ch = examples_from_zarr(str(url), pixel_size, label_name)
        if table is not None and (t.names != table.names or ch != channels):
            raise UserError(f"{url}: its classes {t.names} or channels {ch} differ from the first store's; train on stores that agree")
        examples, table, channels = examples + ex, t, ch
    if not any(e.classes.any() for e in examples):
        raise UserError(f"{data[0]}: the label layer holds no labelled pixels at {pixel_size} µm/px; check the layer or --pixel-size")
    examples = [e for e in examples if e.classes.any()]
    mean, std, fill = channel_stats(examples)
    card = ModelCard(arch, table.names, table.colors, pixel_size, channels, mean, std, tile_size, overlap,
                     training={"data": [str(d) for d in data], "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed})
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    dev = pick_device(device)
    model = build_model(card).to(dev).train()
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=1e-4)
    columns = (TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]:.3f}"), TimeRemainingColumn())
    started, curve, window = time.perf_counter(), [], []
    with Progress(*columns, disable=not progress, transient=True) as bar:
        task = bar.add_task("train", total=steps, loss=float("nan"))
        for step in range(steps):
            tiles = [augment(*sample_tile(examples[int(rng.integers(len(examples)))], tile_size, fill, rng), rng) for _ in range(batch_size)]
            images = [torch.from_numpy(im).to(dev) for im, _ in tiles]
            targets = [{k: v.to(dev) for k, v in targets_from_classes(c).items()} for _, c in tiles]
            for group in optimiser.param_groups:
                group["lr"] = lr_at(step, steps, lr)
            loss = sum(model(images, targets).values())
            optimiser.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            optimiser.step()
            window.append(loss.item())
            if len(window) == 25 or step == steps - 1:  # the loss curve, kept in the card
                curve.append([step + 1, round(float(np.mean(window)), 4), round(time.perf_counter() - started, 1)])
                window = []
            bar.update(task, advance=1, loss=loss.item())
    card.training["seconds"] = round(time.perf_counter() - started, 1)
    card.training["final_loss"] = curve[-1][1]
    card.training["loss_curve"] = curve
    save_checkpoint(out, model, card)
    return card
