"""Training: annotated slides in, one checkpoint with its model card out.

A training set is a list of `Example`s (an image at the model's µm/px and its class map). Batches
are random tiles drawn class-balanced from them, augmented, and turned into Mask R-CNN targets with
one instance per connected piece of each class (SeBRe's region rule, tile by tile).
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from roifile import ImagejRoi
from scipy import ndimage as ndi
from skimage.draw import polygon as fill_polygon
from skimage.transform import resize

from .errors import UserError
from .labels import class_lut, open_labels, read_plane
from .rois import read_roiset
from .model import ARCHITECTURES, ModelCard, build_model, pick_device, save_checkpoint
from .slide import open_slide, pick_level
from .tissue import to_unit

MIN_INSTANCE_PX = 16
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
          seed: int = 0, device: str | None = None, progress: bool = True, rois: list | None = None,
          class_map: str | Path | None = None, pixel_size_in: float | None = None, classes: str | Path | None = None,
          val_sections: list[str] | None = None, val_fraction: float | None = None) -> ModelCard:
    """Train a Mask R-CNN on annotated slides (OME-Zarr label layers, images with RoiSet.zip
    annotations from Fiji, `rois` paired with `data` in order, or section folders) and write the
    checkpoint with its card. Sections named in `val_sections` (or a `val_fraction` of them, drawn
    with `seed`) are held out and listed in the card, for `sebre evaluate` to score."""
    from .datasets import load_class_table, split_by_section

    if arch not in ARCHITECTURES:
        raise UserError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    if not data:
        raise UserError("no training data given; pass one or more OME-Zarr stores with a label layer")
    examples, table, channels = load_examples(data, pixel_size, label_name, rois, load_class_map(class_map), pixel_size_in,
                                              load_class_table(classes))
    examples, held_out = split_by_section(examples, val_sections or val_fraction, seed)
    if not any(e.classes.any() for e in examples):
        raise UserError(f"{data[0]}: the annotations hold no labelled pixels at {pixel_size} µm/px; check them or --pixel-size")
    examples = [e for e in examples if e.classes.any()]
    mean, std, fill = channel_stats(examples)
    card = ModelCard(arch, table.names, table.colors, pixel_size, channels, mean, std, tile_size, overlap,
                     training={"data": [str(d) for d in data], **({"rois": [str(r) for r in rois]} if rois else {}), "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
                               "val_sections": [e.name for e in held_out]})
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
