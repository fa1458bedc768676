"""Training: annotated slides in, one checkpoint with its model card out.

A training set is a list of `Example`s (an image at the model's µm/px and its class map). Batches
are random tiles drawn class-balanced from them, augmented, and turned into Mask R-CNN targets with
one instance per connected piece of each class (SeBRe's region rule, tile by tile).
"""

from __future__ import annotations

import csv
import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from roifile import ImagejRoi
from scipy import ndimage as ndi
from skimage.draw import polygon as fill_polygon
from skimage.transform import resize

from .augment import Augmentation, photometric, random_geometry, warp
from .errors import UserError
from .labels import class_lut, open_labels, read_plane
from .rois import read_roiset
from .model import ARCHITECTURES, ModelCard, build_model, load_init, pick_device, save_checkpoint
from .slide import open_slide, pick_level
from .tissue import to_unit

MIN_INSTANCE_PX = 16
# Of the tiles of sections that fit a tile, the share that shows them cut by the tile's edge, at
# any offset: the model then knows sections in any part of a tile, not only centred ones (a model
# shown only centred sections scored 0.46 mean Dice on GLTa sections lying in a tile's corner, 0.56
# on the same sections rotated 45 degrees, which centred them).
CUT_SECTIONS = 0.5
SECTION_PREFIX = re.compile(r"^s\d+-")  # "s1-cortex" -> "cortex", as `sebre segment` names ROIs
IMAGEJ_DEFAULT_NAME = re.compile(r"^\d{4}(-\d{4,5}){1,2}$")  # what the ROI Manager calls an unnamed ROI
MICRON_UNITS = {"micron", "microns", "um", "µm", "\\u00B5m"}  # ImageJ may write µ escaped
PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40)]


@dataclass
class Example:
    image: np.ndarray  # (C, H, W) float32 in [0, 1]
    classes: np.ndarray  # (H, W) uint8
    name: str
    pixel_size_um: float | None = None


@dataclass
class ClassTable:
    names: list[str]
    colors: list[tuple[int, int, int]]


def resample(image: np.ndarray, classes: np.ndarray, factor: float, tolerance: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Scale an example by `factor` (image bilinear, anti-aliased when shrinking; labels nearest),
    unless it is within `tolerance` already (a pyramid level near the model's µm/px is kept)."""
    if abs(factor - 1) <= tolerance:
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
        image, classes = resample(image, classes, factor)
        examples.append(Example(image, classes, f"{Path(url).name}[z={z}]", pixel_size_um))
    return examples, class_table_of(info), slide.channels


def load_class_map(path: str | Path | None) -> dict[str, str] | None:
    """A JSON object mapping ROI names to class names (--class-map), or None."""
    if path is None:
        return None
    try:
        mapping = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: cannot read the class map ({exc}); give a JSON object like {{\"s1-ctx\": \"cortex\"}}") from None
    if not isinstance(mapping, dict) or not all(isinstance(k, str) and isinstance(v, str) and v for k, v in mapping.items()):
        raise UserError(f"{path}: the class map must be a JSON object of ROI name -> class name strings; fix the file")
    return mapping


def roi_class(name: str, class_map: dict[str, str] | None, source) -> str:
    """The class a ROI annotates: its class-map entry (full name, then without the `s<N>-` section
    prefix), else the name less that prefix. ImageJ's default numeric names carry no class."""
    bare = SECTION_PREFIX.sub("", name or "")
    if class_map is not None:
        if name in class_map or bare in class_map:
            return class_map.get(name, class_map.get(bare))
        raise UserError(f"{source}: ROI {name!r} is not in the class map; add it to the --class-map file or rename the ROI")
    if not bare or bare == "background" or IMAGEJ_DEFAULT_NAME.match(bare):
        raise UserError(f"{source}: ROI {name!r} names no class; rename it in the ROI Manager to its region "
                        "(e.g. cortex or s1-cortex) or map it with --class-map FILE.json")
    return bare


def file_roi_rings(roi: ImagejRoi) -> list[np.ndarray]:
    """The ROI's outline rings as (N, 2) x, y arrays in pixel-corner coordinates; a composite
    (ShapeRoi) gives one ring per sub-path."""
    return [np.asarray(r, np.float64).reshape(-1, 2) for r in roi.coordinates(multi=True) if len(r) >= 3]


def rings_mask(rings: list[np.ndarray], shape: tuple[int, int], scale: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    """Pixels whose centre is inside the rings by the even-odd rule (ImageJ's fill of a composite
    ROI): the XOR of each ring's fill. `scale` (y, x) maps ROI pixels to `shape`'s pixels."""
    mask = np.zeros(shape, bool)
    for ring in rings:
        # a pixel's centre is at +0.5 in ImageJ's corner convention, at the integer in skimage's
        rr, cc = fill_polygon(ring[:, 1] * scale[0] - 0.5, ring[:, 0] * scale[1] - 0.5, shape)
        mask[rr, cc] ^= True
    return mask


def rasterise_rois(rois: list[ImagejRoi], classes: list[int], shape: tuple[int, int],
                   scale: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    """A class map from ROIs (later ROIs paint over earlier ones, as in the ROI Manager's list)."""
    out = np.zeros(shape, np.uint8)
    for roi, cls in zip(rois, classes):
        out[rings_mask(file_roi_rings(roi), shape, scale)] = cls
    return out


def roi_class_table(rois: list[ImagejRoi], class_map: dict[str, str] | None, source) -> ClassTable:
    """Classes in a stable order (the class map's, else sorted names); colours from the first
    ROI of each class with a stroke colour, else a fixed palette."""
    found = [roi_class(r.name, class_map, source) for r in rois]
    names = list(dict.fromkeys(class_map.values())) if class_map is not None else sorted(set(found))
    colors = {}
    for roi, cls in zip(rois, found):
        argb = roi.stroke_color or b""
        if len(argb) == 4 and any(argb[1:]):
            colors.setdefault(cls, tuple(argb[1:]))
    return ClassTable(["background", *names],
                      [(0, 0, 0), *(colors.get(n, PALETTE[i % len(PALETTE)]) for i, n in enumerate(names))])


def _tiff_pixel_size(tif) -> float | None:
    """µm/px from an ImageJ TIFF (unit=micron) or a TIFF resolution in centimetres; None otherwise."""
    tags = tif.pages[0].tags
    if "XResolution" not in tags:
        return None
    num, den = tags["XResolution"].value
    if not num or not den:
        return None
    unit = (tif.imagej_metadata or {}).get("unit")
    if unit is not None:
        return den / num if str(unit) in MICRON_UNITS else None
    return 1e4 * den / num if "ResolutionUnit" in tags and tags["ResolutionUnit"].value == 3 else None


def read_image(path: str | Path) -> tuple[np.ndarray, list[str], float | None]:
    """A TIFF or PNG as (C, H, W) in [0, 1], its channel names and its µm/px when the file says."""
    import tifffile
    from PIL import Image

    path = Path(path)
    size = None
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            with tifffile.TiffFile(path) as tif:
                array, axes, size = tif.series[0].asarray(), tif.series[0].axes, _tiff_pixel_size(tif)
        else:
            with Image.open(path) as im:
                array = np.asarray(im.convert("RGB") if im.mode not in ("L", "I;16", "RGB") else im)
            axes = "YXS" if array.ndim == 3 else "YX"
    except (OSError, ValueError, tifffile.TiffFileError) as exc:
        raise UserError(f"{path}: cannot read this image ({exc}); give a TIFF or PNG of one section") from None
    if axes == "YXS":
        array = array[..., :3].transpose(2, 0, 1)
    elif axes == "YX":
        array = array[None]
    elif axes != "CYX":
        raise UserError(f"{path}: image axes {axes} are not YX, YXS (RGB) or CYX; save one plane as TIFF")
    names = ["R", "G", "B"] if axes == "YXS" else [f"c{i}" for i in range(array.shape[0])]
    return to_unit(array), names, size


def _is_zarr(path: str | Path) -> bool:
    return "://" in str(path) or str(path).rstrip("/").endswith(".zarr") or Path(path).is_dir()


def roi_annotations(roiset_path: str | Path, class_map: dict[str, str] | None = None
                    ) -> tuple[list[ImagejRoi], ClassTable, list[int]]:
    """The ROIs of a RoiSet.zip, their class table and each ROI's class index."""
    try:
        rois = read_roiset(roiset_path)
    except ValueError as exc:  # names the file, the problem and the fix
        raise UserError(str(exc)) from None
    except OSError as exc:
        raise UserError(f"{roiset_path}: cannot read the ROIs ({exc}); export them again from the ROI Manager") from None
    if not rois:
        raise UserError(f"{roiset_path}: no ROIs; outline the regions in the ROI Manager and save them again")
    table = roi_class_table(rois, class_map, roiset_path)
    return rois, table, [table.names.index(roi_class(r.name, class_map, roiset_path)) for r in rois]


def examples_from_rois(image_path: str | Path, roiset_path: str | Path, pixel_size_um: float,
                       class_map: dict[str, str] | None = None, pixel_size_in: float | None = None
                       ) -> tuple[list[Example], ClassTable, list[str]]:
    """An image (TIFF, PNG or OME-Zarr) annotated with a RoiSet.zip, at `pixel_size_um`. ROI
    coordinates are the image's (level-0) pixels; a ROI's stack position picks its plane."""
    rois, table, classes = roi_annotations(roiset_path, class_map)
    if _is_zarr(image_path):
        planes, channels, level0, size = _zarr_planes(image_path, pixel_size_um)
    else:
        image, channels, size = read_image(image_path)
        planes, level0 = [image], image.shape[1:]
        size = pixel_size_in or size
    if pixel_size_in and _is_zarr(image_path):
        size = pixel_size_in * level0[1] / planes[0].shape[2]
    if not size:
        raise UserError(f"{image_path}: the file does not say its pixel size; pass --pixel-size-in UM (µm per pixel)")
    examples = []
    for z, image in enumerate(planes):
        here = [(r, c) for r, c in zip(rois, classes) if r.position in (0, z + 1)]
        scale = (image.shape[1] / level0[0], image.shape[2] / level0[1])
        label = rasterise_rois([r for r, _ in here], [c for _, c in here], image.shape[1:], scale)
        examples.append(Example(*resample(image, label, size / pixel_size_um), f"{Path(str(image_path)).name}[z={z}]", pixel_size_um))
    return examples, table, channels


def _zarr_planes(url, pixel_size_um: float) -> tuple[list[np.ndarray], list[str], tuple[int, int], float]:
    """Every plane of an OME-Zarr image at the level nearest `pixel_size_um`, with level 0's shape."""
    slide = open_slide(url)
    level = pick_level(slide, pixel_size_um)
    planes = [to_unit(np.asarray(slide.plane(level, z))) for z in range(slide.n_planes)]
    return planes, slide.channels, slide.yx_shape(0), slide.pixel_size(level)


def load_examples(data: list[str], pixel_size: float, label_name: str | None = None, rois: list | None = None,
                  class_map: dict[str, str] | None = None, pixel_size_in: float | None = None,
                  classes: ClassTable | None = None) -> tuple[list[Example], ClassTable, list[str]]:
    """All training examples: OME-Zarr label layers, images paired in order with RoiSet.zip files,
    or section folders (shared-data or SeBRe layout; `classes` is a SeBRe folder's class table)."""
    from .datasets import folder_examples, folder_layout

    if rois and len(rois) != len(data):
        raise UserError(f"{len(data)} image(s) but {len(rois)} --rois file(s); give one RoiSet.zip per image, in the same order")
    examples, table, channels = [], None, None
    for i, url in enumerate(data):
        if rois:
            ex, t, ch = examples_from_rois(url, rois[i], pixel_size, class_map, pixel_size_in)
        elif folder_layout(url):
            ex, t, ch = folder_examples(url, pixel_size, classes, pixel_size_in)
        else:
            ex, t, ch = examples_from_zarr(str(url), pixel_size, label_name)
        if table is not None and (t.names != table.names or ch != channels):
            raise UserError(f"{url}: its classes {t.names[1:]} or channels {ch} differ from the first input's; train on "
                            "inputs that agree (with ROIs, list every class in --class-map)")
        examples, table, channels = examples + ex, table or t, channels or ch
    return examples, table, channels


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

    def __init__(self, examples: list[Example], size: int, fill: np.ndarray, aug: Augmentation):
        self.examples, self.size, self.fill, self.aug = examples, size, fill, aug
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
                              (self.size, self.size), self.fill, field)
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
    fill = np.median(glass, axis=1) if glass.size else flat.mean(axis=1)
    return flat.mean(axis=1).tolist(), np.maximum(flat.std(axis=1), 1e-3).tolist(), fill.astype(np.float32)


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
    from .evaluate import confusion, dice_iou
    from .infer import predict_image

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
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    csv_path, png_path = curve_paths(out)
    csv_path.parent.mkdir(parents=True, exist_ok=True)  # the first curves come before the first checkpoint
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, CURVE_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6, 5), sharex=True)
    top.plot([r["step"] for r in rows], [r["loss"] for r in rows], color="tab:blue")
    top.set_ylabel("training loss")
    val = [r for r in rows if r["val_dice"] != ""]
    bottom.plot([r["step"] for r in val], [r["val_dice"] for r in val], "o-", color="tab:green")
    bottom.set_ylabel("validation mean Dice")
    bottom.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


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


def train(data: list[str], out: str | Path, *, arch: str = "tiny_fpn", steps: int = 400, pixel_size: float = 16.0,
          tile_size: int = 256, overlap: int = 64, batch_size: int = 4, lr: float = 2e-3, label_name: str | None = None,
          seed: int = 0, device: str | None = None, progress: bool = True, rois: list | None = None,
          class_map: str | Path | None = None, pixel_size_in: float | None = None, classes: str | Path | None = None,
          val_sections: list[str] | None = None, val_fraction: float | None = None, test_sections: list[str] | None = None, val_every: int = 100,
          init: str | Path | None = None, augmentation: Augmentation | None = None, workers: int = 0, semantic: bool = True) -> ModelCard:
    """Train a Mask R-CNN on annotated slides (OME-Zarr label layers, images with RoiSet.zip
    annotations from Fiji, `rois` paired with `data` in order, or section folders) and write the
    checkpoint with its card, and its loss and validation curves beside it (`curve_paths`).

    Sections named in `val_sections` (or a `val_fraction` of them, drawn with `seed`) are held out,
    segmented every `val_every` steps and at the end, and the checkpoint written is the one with the
    best mean Dice on them; without them it is the last. `test_sections` are left out altogether
    (and listed in the card), for a score on sections neither training nor selection saw. `init` is a torchvision weights file
    (e.g. COCO Mask R-CNN) to start from. `workers` processes prepare the augmented tiles (0: this
    one), which a GPU needs: a 512 px tile costs about 0.2 s of one CPU core. `semantic` adds the
    per-pixel branch (model.RegionMaskRCNN) whose maps then give the regions."""
    from .datasets import load_class_table, split_by_section

    if arch not in ARCHITECTURES:
        raise UserError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    if not data:
        raise UserError("no training data given; pass one or more OME-Zarr stores with a label layer")
    if not 0 <= overlap < tile_size:
        raise UserError(f"overlap {overlap} must be at least 0 and smaller than the tile size {tile_size}; pass a smaller --overlap")
    examples, table, channels = load_examples(data, pixel_size, label_name, rois, load_class_map(class_map), pixel_size_in,
                                              load_class_table(classes))
    examples, tested = split_by_section(examples, test_sections, what="test")
    examples, held_out = split_by_section(examples, val_sections or val_fraction, seed)
    if not any(e.classes.any() for e in examples):
        raise UserError(f"{data[0]}: the annotations hold no labelled pixels at {pixel_size} µm/px; check them or --pixel-size")
    examples = [e for e in examples if e.classes.any()]
    mean, std, fill = channel_stats(examples)
    aug = augmentation or Augmentation()
    card = ModelCard(arch, table.names, table.colors, pixel_size, channels, mean, std, tile_size, overlap,
                     training={"data": [str(d) for d in data], **({"rois": [str(r) for r in rois]} if rois else {}), "steps": steps,
                               "batch_size": batch_size, "lr": lr, "schedule": "linear warm-up 30 steps, cosine to 5 %", "seed": seed,
                               "sampling": "class-balanced", "augmentation": aug.to_dict(), "workers": workers,
                               "train_sections": [e.name for e in examples], "val_sections": [e.name for e in held_out],
                               "test_sections": [e.name for e in tested]}, semantic=semantic)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    dev = pick_device(device)
    model = build_model(card)
    if init is not None:
        taken, total = load_init(model, init)
        card.training["init"] = {"file": Path(init).name, "tensors_taken": taken, "tensors_in_model": total}
    if semantic:  # rare regions weigh more per pixel, so a small hypothalamus is not lost to cortex
        model.class_weights = semantic_weights(examples, len(table.names))
    model = model.to(dev).train()
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=1e-4)
    stream = batches(TileSampler(examples, tile_size, fill, aug), batch_size, rng, seed, workers)
    best, rows, window = {"dice": -1.0, "step": 0, "state": None}, [], []
    started, cpu_started = time.perf_counter(), time.process_time()
    with _progress(progress) as bar:
        task = bar.add_task("train", total=steps, loss=float("nan"), val="-")
        for step in range(1, steps + 1):
            window.append(train_step(model, optimiser, next(stream), lr_at(step - 1, steps, lr), dev))
            validating = bool(held_out) and (step % val_every == 0 or step == steps)
            if step % 25 and not validating and step != steps:
                bar.update(task, advance=1, loss=window[-1])
                continue
            row = {"step": step, "loss": round(float(np.mean(window)), 4), "lr": round(lr_at(step - 1, steps, lr), 7),
                   "val_dice": "", "seconds": round(time.perf_counter() - started, 1)}
            window = []
            if validating:
                row["val_dice"] = round(validate(model, card, held_out, dev), 4)
                if row["val_dice"] > best["dice"]:
                    best = {"dice": row["val_dice"], "step": step, "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}
                    save_checkpoint(out, model, card)  # a run killed later still leaves its best model
            rows.append(row)
            write_curves(out, rows)
            bar.update(task, advance=1, loss=row["loss"], val=row["val_dice"] if validating else bar.tasks[task].fields["val"])
    if best["state"] is not None:
        model.load_state_dict(best["state"])
        card.training.update(best_step=best["step"], val_dice=best["dice"])
    card.training.update(seconds=round(time.perf_counter() - started, 1), cpu_seconds=round(time.process_time() - cpu_started, 1),
                         final_loss=rows[-1]["loss"], loss_curve=[[r["step"], r["loss"], r["seconds"]] for r in rows],
                         val_curve=[[r["step"], r["val_dice"]] for r in rows if r["val_dice"] != ""])
    save_checkpoint(out, model, card)
    return card
