"""Annotated sections in every form users keep them, as training `Example`s at one µm/px.

An `Example` is an image (C, Y, X) float32 in [0, 1], its class map uint8 (Y, X), its section name
and µm/px; a `SectionSet` is a list of them with their class table and channel names. Sources:
OME-Zarr stores with a label layer, images (TIFF, PNG, OME-Zarr) annotated with a RoiSet.zip from
Fiji, and section folders in the shared-data layout or SeBRe's original one.

Shared-data layout::

    <set>/images/<stem>.png|.tif   <set>/labels/<stem>.png   <set>/sections.json

SeBRe's layout (its brain_dataset.py): images `*_N.jpg` and, per image, a folder `*_N/` of binary
mask PNGs whose name ends in the class id, `..._m_K.png` or `..._mK.png` (SeBRe's rename_masks
writes `section_masks_62_PG_m10.png`). Images and mask folders may sit in the folder itself or one
level down (SeBRe keeps `mrcnn_train_dataset_images/` beside `mrcnn_train_dataset_masks/`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from skimage.transform import resize

from .errors import UserError
from .labels import class_lut, open_labels, read_plane
from .readers import (
    PALETTE,
    ClassTable,
    class_table,
    class_table_of,
    is_zarr,
    load_class_map,
    load_class_table,
    rasterise_rois,
    read_image,
    read_json,
    read_labels,
    roi_annotations,
)
from .slide import open_slide, pick_level
from .tissue import to_unit

# SeBRe's eight classes, ids 1-8, as its brain_dataset.py adds them
SEBRE_CLASSES = [
    "cortex",
    "hippocampus",
    "basal_ganglia",
    "thalamus",
    "prethalamus",
    "midbrain",
    "hindbrain",
    "telencephalic_vesicle",
]
MASK_NAME = re.compile(r"_m_?(\d+)\.png$", re.IGNORECASE)
NUMBERED = re.compile(r"_(\d+)$")
IMAGE_SUFFIXES = {".png", ".tif", ".tiff", ".jpg", ".jpeg"}
RESAMPLE_TOLERANCE = 0.005  # mixed pixel sizes differ by a few %: bring every section to the same µm/px


@dataclass
class Example:
    """One annotated section: what training and validation consume."""

    image: np.ndarray  # (C, H, W) float32 in [0, 1]
    classes: np.ndarray  # (H, W) uint8
    name: str
    pixel_size_um: float | None = None


@dataclass
class SectionSet:
    """Annotated sections of one kind: the examples, their class table and channel names."""

    examples: list[Example]
    table: ClassTable
    channels: list[str]


def resample(
    image: np.ndarray, classes: np.ndarray, factor: float, tolerance: float = 0.1
) -> tuple[np.ndarray, np.ndarray]:
    """Scale an example by `factor` (image bilinear, anti-aliased when shrinking; labels nearest),
    unless it is within `tolerance` already (a pyramid level near the model's µm/px is kept)."""
    if abs(factor - 1) <= tolerance:
        return image, classes
    shape = (max(1, round(classes.shape[0] * factor)), max(1, round(classes.shape[1] * factor)))
    image = resize(image, (image.shape[0], *shape), order=1, anti_aliasing=factor < 1, preserve_range=True).astype(
        np.float32
    )
    classes = resize(classes, shape, order=0, anti_aliasing=False, preserve_range=True).astype(np.uint8)
    return image, classes


def folder_layout(path: str | Path) -> str | None:
    """'shared' (a sections.json), 'sebre' (numbered mask folders) or None for anything else."""
    path = Path(path)
    if not path.is_dir() or str(path).rstrip("/").endswith(".zarr"):
        return None
    if (path / "sections.json").is_file():
        return "shared"
    return "sebre" if _mask_folders(path) else None


def at_pixel_size(example: Example, pixel_size_um: float | None, source) -> Example:
    """The example at `pixel_size_um` (image area-averaged/bilinear, labels nearest); as is for None."""
    if pixel_size_um is None:
        return example
    if not example.pixel_size_um:
        raise UserError(f"{source}: the pixel size of {example.name} is unknown; pass pixel_size_in=UM (µm per pixel)")
    image, classes = resample(example.image, example.classes, example.pixel_size_um / pixel_size_um, RESAMPLE_TOLERANCE)
    return replace(example, image=image, classes=classes, pixel_size_um=pixel_size_um)


@dataclass(frozen=True)
class TrainingData:
    """Annotated inputs to learn from: OME-Zarr stores with a label layer (`label_name`, default
    the first), section folders, or images paired in order with `rois` (RoiSet.zip files).
    `class_map` is a JSON file of ROI name -> class name, `pixel_size_in` the inputs' µm/px where
    their files do not say it, `classes` a SeBRe folder's class table (JSON)."""

    inputs: tuple[str, ...]
    rois: tuple[str, ...] = ()
    label_name: str | None = None
    class_map: str | Path | None = None
    pixel_size_in: float | None = None
    classes: str | Path | None = None


@dataclass(frozen=True)
class SectionFiles:
    """One section of a shared-data set: its image and label files and its µm/px."""

    image: Path
    labels: Path
    pixel_size_um: float


@dataclass(frozen=True)
class SetIndex:
    """A shared-data set's `sections.json`: its class table and its checked sections."""

    table: ClassTable
    sections: list[SectionFiles]


@dataclass(frozen=True)
class Split:
    """Sections kept for training and those held out, by whole sections."""

    kept: list[Example]
    held_out: list[Example]


def _inside(root: Path, relative, source) -> Path:
    """A path from a sections.json entry, refused when it is absolute or climbs out with '..'."""
    if not isinstance(relative, str) or not relative:
        raise UserError(f"{source}: a section lacks its image or labels path; list both as paths inside {root}")
    if Path(relative).is_absolute() or ".." in Path(relative).parts:
        raise UserError(f"{source}: {relative!r} points outside {root}; give paths relative to the set's folder")
    return root / relative


def shared_sections(root: str | Path) -> SetIndex:
    """The class table and the checked section entries of `<root>/sections.json`."""
    root = Path(root)
    source = root / "sections.json"
    data = read_json(source)
    table = class_table(data, source)
    sections = data.get("sections") if isinstance(data, dict) else None
    if not isinstance(sections, list) or not sections:
        raise UserError(
            f'{source}: no sections listed; add "sections": [{{"image": ..., "labels": ..., "pixel_size_um": ...}}]'
        )
    out = []
    for s in sections:
        size = s.get("pixel_size_um") if isinstance(s, dict) else None
        if not isinstance(size, int | float) or isinstance(size, bool) or not size > 0:
            raise UserError(f"{source}: section {str(s)[:80]} has no positive pixel_size_um; add it (µm per pixel)")
        out.append(
            SectionFiles(_inside(root, s.get("image"), source), _inside(root, s.get("labels"), source), float(size))
        )
    return SetIndex(table, out)


def shared_examples(root: str | Path, pixel_size_um: float | None = None) -> SectionSet:
    """Every section of a shared-data set, at `pixel_size_um` (None: each at its own)."""
    index = shared_sections(root)
    table, examples, channels = index.table, [], None
    for s in index.sections:
        picture = read_image(s.image)
        image, names = picture.pixels, picture.channels
        classes = read_labels(s.labels, len(table.names))
        if classes.shape != image.shape[1:]:
            raise UserError(
                f"{s.labels}: {classes.shape} pixels but the image has {image.shape[1:]}; labels must match their image"
            )
        if channels is not None and names != channels:
            raise UserError(
                f"{s.image}: channels {names} differ from the other sections' {channels}; keep one kind of image per "
                "set"
            )
        channels = names
        examples.append(at_pixel_size(Example(image, classes, s.image.stem, s.pixel_size_um), pixel_size_um, root))
    return SectionSet(examples, table, channels)


def _mask_folders(root: Path) -> dict[int, Path]:
    """Numbered folders (`*_N`) holding class mask PNGs, in the folder or one level down."""
    found = {}
    for folder in [*root.glob("*_*"), *root.glob("*/*_*")]:
        match = NUMBERED.search(folder.name)
        if match and folder.is_dir() and any(MASK_NAME.search(p.name) for p in folder.glob("*.png")):
            if int(match[1]) in found:
                raise UserError(
                    f"{folder}: mask folder number {match[1]} also used by {found[int(match[1])]}; "
                    "number each section once"
                )
            found[int(match[1])] = folder
    return found


def _numbered_images(root: Path, masks: dict[int, Path]) -> dict[int, Path]:
    """Images named `*_N.<ext>` in the folder or one level down, outside the mask folders."""
    inside = set(masks.values())
    found = {}
    for path in [*root.glob("*_*"), *root.glob("*/*_*")]:
        match = NUMBERED.search(path.stem)
        if match and path.suffix.lower() in IMAGE_SUFFIXES and path.parent not in inside and path.is_file():
            if int(match[1]) in found:
                raise UserError(
                    f"{path}: image number {match[1]} also used by {found[int(match[1])]}; number each section once"
                )
            found[int(match[1])] = path
    return found


def sebre_class_map(folder: Path, shape: tuple[int, int], n_classes: int) -> np.ndarray:
    """The class map of one section from its binary masks (in name order, later ones on top)."""
    from PIL import Image

    classes = np.zeros(shape, np.uint8)
    for path in sorted(p for p in folder.glob("*.png") if MASK_NAME.search(p.name)):
        cls = int(MASK_NAME.search(path.name)[1])
        if not 0 < cls < n_classes:
            raise UserError(
                f"{path}: class id {cls} is not in the class table (1-{n_classes - 1}); pass classes=FILE.json"
            )
        try:
            with Image.open(path) as im:
                mask = np.asarray(im.convert("L")) > 127
        except (OSError, ValueError) as exc:
            raise UserError(f"{path}: cannot read this mask ({exc}); save it again as a black and white PNG") from None
        if mask.shape != shape:
            raise UserError(f"{path}: mask is {mask.shape} but its image is {shape}; masks must match their image")
        classes[mask] = cls
    return classes


def sebre_examples(
    root: str | Path,
    pixel_size_um: float | None = None,
    table: ClassTable | None = None,
    pixel_size_in: float | None = None,
) -> SectionSet:
    """Every image of a SeBRe folder with a mask folder of the same number. JPEGs carry no pixel
    size: `pixel_size_in` gives it (needed when `pixel_size_um` asks for resampling)."""
    root = Path(root)
    table = table or ClassTable(["background", *SEBRE_CLASSES], [(0, 0, 0), *PALETTE[: len(SEBRE_CLASSES)]])
    masks = _mask_folders(root)
    images = _numbered_images(root, masks)
    if not masks.keys() & images.keys():
        raise UserError(
            f"{root}: no image *_N.jpg matches a mask folder *_N/; "
            "name them as SeBRe does (section_img_0.jpg, section_masks_0/)"
        )
    examples, channels = [], None
    for n in sorted(masks.keys() & images.keys()):
        picture = read_image(images[n])
        image, names, size = picture.pixels, picture.channels, picture.pixel_size_um
        if channels is not None and names != channels:
            raise UserError(
                f"{images[n]}: channels {names} differ from the other sections' {channels}; "
                "keep one kind of image per set"
            )
        channels = names
        classes = sebre_class_map(masks[n], image.shape[1:], len(table.names))
        example = Example(image, classes, images[n].stem, pixel_size_in or size)
        examples.append(at_pixel_size(example, pixel_size_um, root))
    return SectionSet(examples, table, channels)


def folder_examples(
    path: str | Path,
    pixel_size_um: float | None = None,
    table: ClassTable | None = None,
    pixel_size_in: float | None = None,
) -> SectionSet:
    """A folder in either layout, told apart by its files."""
    layout = folder_layout(path)
    if layout == "shared":
        return shared_examples(path, pixel_size_um)
    if layout == "sebre":
        return sebre_examples(path, pixel_size_um, table, pixel_size_in)
    raise UserError(
        f"{path}: neither a set folder (sections.json) nor a SeBRe folder (section_img_N.jpg with section_masks_N/)"
    )


def split_by_section(
    examples: list[Example],
    val: list[str] | float | None,
    seed: int = 0,
    what: str = "validation",
    keep_one: bool = True,
) -> Split:
    """Whole sections held out: the names listed, or a fraction drawn with `seed`; `what` names the
    held-out part in messages. `keep_one`: at least one section must be kept (for training)."""
    if not val:
        return Split(examples, [])
    if isinstance(val, float):
        if not 0 < val < 1:
            raise UserError(f"validation fraction {val} must be between 0 and 1 (e.g. 0.2)")
        rng = np.random.default_rng(seed)
        picked = {examples[i].name for i in rng.permutation(len(examples))[: max(1, round(val * len(examples)))]}
    else:
        picked = set(val)
        unknown = picked - {e.name for e in examples}
        if unknown:
            raise UserError(
                f"{what} sections {sorted(unknown)} are not in the data; give section names such as {examples[0].name}"
            )
    train = [e for e in examples if e.name not in picked]
    if not train and keep_one:
        raise UserError(f"every section went to {what}; keep at least one for training")
    return Split(train, [e for e in examples if e.name in picked])


def examples_from_zarr(url: str, pixel_size_um: float, label_name: str | None = None) -> SectionSet:
    """Every plane of an OME-Zarr store with a label layer, at the level nearest `pixel_size_um`."""
    slide = open_slide(url)
    names = slide.label_names()
    if not names:
        raise UserError(
            f"{url}: no label layer to train on; add one (labels/<name>) or pass images with RoiSet.zip annotations"
        )
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
    return SectionSet(examples, class_table_of(info), slide.channels)


def examples_from_rois(
    image_path: str | Path,
    roiset_path: str | Path,
    pixel_size_um: float,
    class_map: dict[str, str] | None = None,
    pixel_size_in: float | None = None,
) -> SectionSet:
    """An image (TIFF, PNG or OME-Zarr) annotated with a RoiSet.zip, at `pixel_size_um`. ROI
    coordinates are the image's (level-0) pixels; a ROI's stack position picks its plane."""
    annotations = roi_annotations(roiset_path, class_map)
    rois, table, classes = annotations.rois, annotations.table, annotations.classes
    if is_zarr(image_path):
        planes, channels, level0, size = _zarr_planes(image_path, pixel_size_um)
    else:
        picture = read_image(image_path)
        planes, channels, level0 = [picture.pixels], picture.channels, picture.pixels.shape[1:]
        size = pixel_size_in or picture.pixel_size_um
    if pixel_size_in and is_zarr(image_path):
        size = pixel_size_in * level0[1] / planes[0].shape[2]
    if not size:
        raise UserError(f"{image_path}: the file does not say its pixel size; pass pixel_size_in=UM (µm per pixel)")
    examples = []
    for z, image in enumerate(planes):
        here = [(r, c) for r, c in zip(rois, classes) if r.position in (0, z + 1)]
        scale = (image.shape[1] / level0[0], image.shape[2] / level0[1])
        label = rasterise_rois([r for r, _ in here], [c for _, c in here], image.shape[1:], scale)
        examples.append(
            Example(
                *resample(image, label, size / pixel_size_um), f"{Path(str(image_path)).name}[z={z}]", pixel_size_um
            )
        )
    return SectionSet(examples, table, channels)


def _zarr_planes(url, pixel_size_um: float) -> tuple[list[np.ndarray], list[str], tuple[int, int], float]:
    """Every plane of an OME-Zarr image at the level nearest `pixel_size_um`, with level 0's shape."""
    slide = open_slide(url)
    level = pick_level(slide, pixel_size_um)
    planes = [to_unit(np.asarray(slide.plane(level, z))) for z in range(slide.n_planes)]
    return planes, slide.channels, slide.yx_shape(0), slide.pixel_size(level)


def load_examples(data: TrainingData, pixel_size: float) -> SectionSet:
    """All of `data`'s sections at `pixel_size` µm/px; every input must have the same classes and channels."""
    if not data.inputs:
        raise UserError(
            "no training data given; pass one or more OME-Zarr stores with a label layer, or section folders"
        )
    if data.rois and len(data.rois) != len(data.inputs):
        raise UserError(
            f"{len(data.inputs)} image(s) but {len(data.rois)} rois file(s); give one RoiSet.zip per image, "
            "in the same order"
        )
    class_map, classes = load_class_map(data.class_map), load_class_table(data.classes)
    found = None
    for i, url in enumerate(data.inputs):
        if data.rois:
            part = examples_from_rois(url, data.rois[i], pixel_size, class_map, data.pixel_size_in)
        elif folder_layout(url):
            part = folder_examples(url, pixel_size, classes, data.pixel_size_in)
        else:
            part = examples_from_zarr(str(url), pixel_size, data.label_name)
        if found is not None and (part.table.names != found.table.names or part.channels != found.channels):
            raise UserError(
                f"{url}: its classes {part.table.names[1:]} or channels {part.channels} differ from the first "
                "input's; train on inputs that agree (with ROIs, list every class in class_map)"
            )
        found = part if found is None else SectionSet(found.examples + part.examples, found.table, found.channels)
    return found
