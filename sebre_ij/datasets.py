"""Annotated sections kept as files: the shared-data folder layout and SeBRe's original one.

Both readers give what training consumes (`train.Example`: image (C, Y, X) float32 in [0, 1], class
map uint8 (Y, X), section name, µm/px) with a `ClassTable`, so `sebre train FOLDER` reads a folder
as it reads an OME-Zarr label layer, and `sebre evaluate` reads label images with their class table.

Shared-data layout::

    <set>/images/<stem>.png|.tif   <set>/labels/<stem>.png   <set>/sections.json

SeBRe's layout (its brain_dataset.py): images `*_N.jpg` and, per image, a folder `*_N/` of binary
mask PNGs whose name ends in the class id, `..._m_K.png` or `..._mK.png` (SeBRe's rename_masks
writes `section_masks_62_PG_m10.png`). Images and mask folders may sit in the folder itself or one
level down (SeBRe keeps `mrcnn_train_dataset_images/` beside `mrcnn_train_dataset_masks/`).
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np

from .errors import UserError
from .train import PALETTE, ClassTable, Example, read_image, resample

# SeBRe's eight classes, ids 1-8, as its brain_dataset.py adds them
SEBRE_CLASSES = ["cortex", "hippocampus", "basal_ganglia", "thalamus", "prethalamus", "midbrain", "hindbrain",
                 "telencephalic_vesicle"]
MASK_NAME = re.compile(r"_m_?(\d+)\.png$", re.IGNORECASE)
NUMBERED = re.compile(r"_(\d+)$")
IMAGE_SUFFIXES = {".png", ".tif", ".tiff", ".jpg", ".jpeg"}
MAX_JSON_BYTES = 16 << 20
RESAMPLE_TOLERANCE = 0.005  # mixed pixel sizes differ by a few %: bring every section to the same µm/px


def folder_layout(path: str | Path) -> str | None:
    """'shared' (a sections.json), 'sebre' (numbered mask folders) or None for anything else."""
    path = Path(path)
    if not path.is_dir() or str(path).rstrip("/").endswith(".zarr"):
        return None
    if (path / "sections.json").is_file():
        return "shared"
    return "sebre" if _mask_folders(path) else None


def read_json(path: str | Path):
    """A small JSON file, size-checked before it is parsed (the files come from anywhere)."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise UserError(f"{path}: larger than {MAX_JSON_BYTES >> 20} MiB; a class table or section list is far smaller")
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: cannot read this JSON file ({exc}); fix or replace it") from None


def class_table(data, source) -> ClassTable:
    """A ClassTable from `{"classes": [{"index": 1, "name": "cortex", "rgb": [r, g, b]}, ...]}`
    (sections.json's table); indices missing from the list get placeholder names."""
    entries = data.get("classes") if isinstance(data, dict) else None
    fix = 'give "classes": [{"index": 1, "name": "cortex", "rgb": [230, 90, 60]}, ...]'
    if not isinstance(entries, list) or not entries:
        raise UserError(f"{source}: no class table; {fix}")
    names, colors = {0: "background"}, {0: (0, 0, 0)}
    for e in entries:
        ok = isinstance(e, dict) and isinstance(e.get("index"), int) and 0 <= e["index"] < 256 and isinstance(e.get("name"), str)
        rgb = e.get("rgb", PALETTE[0]) if ok else None
        if not ok or not (isinstance(rgb, list | tuple) and len(rgb) == 3 and all(isinstance(v, int) and 0 <= v < 256 for v in rgb)):
            raise UserError(f"{source}: bad class entry {str(e)[:80]}; {fix}")
        names[e["index"]], colors[e["index"]] = e["name"], tuple(rgb)
    n = max(names) + 1
    return ClassTable([names.get(i, f"class{i}") for i in range(n)],
                      [colors.get(i, PALETTE[i % len(PALETTE)]) for i in range(n)])


def load_class_table(path: str | Path | None) -> ClassTable | None:
    """The class table of a JSON file (--classes), or None."""
    return None if path is None else class_table(read_json(path), path)


def read_labels(path: str | Path, n_classes: int | None = None) -> np.ndarray:
    """A single-channel label image (PNG or TIFF) as a uint8 class map."""
    from PIL import Image

    path = Path(path)
    try:
        with Image.open(path) as im:
            values = np.asarray(im)
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read this label image ({exc}); give a single-channel PNG or TIFF of class indices") from None
    if values.ndim != 2 or values.dtype.kind not in "ui" or values.min(initial=0) < 0 or values.max(initial=0) > 255:
        raise UserError(f"{path}: a label image must be one channel of class indices 0-255 (got {values.dtype} "
                        f"{values.shape}); save the class map as an 8-bit grey PNG")
    if n_classes is not None and values.max(initial=0) >= n_classes:
        raise UserError(f"{path}: class {int(values.max())} is not in the class table ({n_classes - 1} classes); "
                        "add it to the table or fix the labels")
    return values.astype(np.uint8)


def at_pixel_size(example: Example, pixel_size_um: float | None, source) -> Example:
    """The example at `pixel_size_um` (image area-averaged/bilinear, labels nearest); as is for None."""
    if pixel_size_um is None:
        return example
    if not example.pixel_size_um:
        raise UserError(f"{source}: the pixel size of {example.name} is unknown; pass --pixel-size-in UM (µm per pixel)")
    image, classes = resample(example.image, example.classes, example.pixel_size_um / pixel_size_um, RESAMPLE_TOLERANCE)
    return replace(example, image=image, classes=classes, pixel_size_um=pixel_size_um)


def _inside(root: Path, relative, source) -> Path:
    """A path from a sections.json entry, refused when it is absolute or climbs out with '..'."""
    if not isinstance(relative, str) or not relative:
        raise UserError(f"{source}: a section lacks its image or labels path; list both as paths inside {root}")
    if Path(relative).is_absolute() or ".." in Path(relative).parts:
        raise UserError(f"{source}: {relative!r} points outside {root}; give paths relative to the set's folder")
    return root / relative


def shared_sections(root: str | Path) -> tuple[ClassTable, list[dict]]:
    """The class table and the checked section entries of `<root>/sections.json`."""
    root = Path(root)
    source = root / "sections.json"
    data = read_json(source)
    table = class_table(data, source)
    sections = data.get("sections") if isinstance(data, dict) else None
    if not isinstance(sections, list) or not sections:
        raise UserError(f"{source}: no sections listed; add \"sections\": [{{\"image\": ..., \"labels\": ..., \"pixel_size_um\": ...}}]")
    out = []
    for s in sections:
        size = s.get("pixel_size_um") if isinstance(s, dict) else None
        if not isinstance(size, int | float) or isinstance(size, bool) or not size > 0:
            raise UserError(f"{source}: section {str(s)[:80]} has no positive pixel_size_um; add it (µm per pixel)")
        out.append({"image": _inside(root, s.get("image"), source), "labels": _inside(root, s.get("labels"), source),
                    "pixel_size_um": float(size)})
    return table, out


def shared_examples(root: str | Path, pixel_size_um: float | None = None) -> tuple[list[Example], ClassTable, list[str]]:
    """Every section of a shared-data set, at `pixel_size_um` (None: each at its own)."""
    table, sections = shared_sections(root)
    examples, channels = [], None
    for s in sections:
        image, names, _ = read_image(s["image"])
        classes = read_labels(s["labels"], len(table.names))
        if classes.shape != image.shape[1:]:
            raise UserError(f"{s['labels']}: {classes.shape} pixels but the image has {image.shape[1:]}; labels must match their image")
        if channels is not None and names != channels:
            raise UserError(f"{s['image']}: channels {names} differ from the other sections' {channels}; keep one kind of image per set")
        channels = names
        examples.append(at_pixel_size(Example(image, classes, s["image"].stem, s["pixel_size_um"]), pixel_size_um, root))
    return examples, table, channels


def _mask_folders(root: Path) -> dict[int, Path]:
    """Numbered folders (`*_N`) holding class mask PNGs, in the folder or one level down."""
    found = {}
    for folder in [*root.glob("*_*"), *root.glob("*/*_*")]:
        match = NUMBERED.search(folder.name)
        if match and folder.is_dir() and any(MASK_NAME.search(p.name) for p in folder.glob("*.png")):
            if int(match[1]) in found:
                raise UserError(f"{folder}: mask folder number {match[1]} also used by {found[int(match[1])]}; number each section once")
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
                raise UserError(f"{path}: image number {match[1]} also used by {found[int(match[1])]}; number each section once")
            found[int(match[1])] = path
    return found


def sebre_class_map(folder: Path, shape: tuple[int, int], n_classes: int) -> np.ndarray:
    """The class map of one section from its binary masks (in name order, later ones on top)."""
    from PIL import Image

    classes = np.zeros(shape, np.uint8)
    for path in sorted(p for p in folder.glob("*.png") if MASK_NAME.search(p.name)):
        cls = int(MASK_NAME.search(path.name)[1])
        if not 0 < cls < n_classes:
            raise UserError(f"{path}: class id {cls} is not in the class table (1-{n_classes - 1}); pass --classes FILE.json")
        try:
            with Image.open(path) as im:
                mask = np.asarray(im.convert("L")) > 127
        except (OSError, ValueError) as exc:
            raise UserError(f"{path}: cannot read this mask ({exc}); save it again as a black and white PNG") from None
        if mask.shape != shape:
            raise UserError(f"{path}: mask is {mask.shape} but its image is {shape}; masks must match their image")
        classes[mask] = cls
    return classes


def sebre_examples(root: str | Path, pixel_size_um: float | None = None, table: ClassTable | None = None,
                   pixel_size_in: float | None = None) -> tuple[list[Example], ClassTable, list[str]]:
    """Every image of a SeBRe folder with a mask folder of the same number. JPEGs carry no pixel
    size: `pixel_size_in` gives it (needed when `pixel_size_um` asks for resampling)."""
    root = Path(root)
    table = table or ClassTable(["background", *SEBRE_CLASSES], [(0, 0, 0), *PALETTE[:len(SEBRE_CLASSES)]])
    masks = _mask_folders(root)
    images = _numbered_images(root, masks)
    if not masks.keys() & images.keys():
        raise UserError(f"{root}: no image *_N.jpg matches a mask folder *_N/; name them as SeBRe does (section_img_0.jpg, section_masks_0/)")
    examples, channels = [], None
    for n in sorted(masks.keys() & images.keys()):
        image, names, size = read_image(images[n])
        if channels is not None and names != channels:
            raise UserError(f"{images[n]}: channels {names} differ from the other sections' {channels}; keep one kind of image per set")
        channels = names
        classes = sebre_class_map(masks[n], image.shape[1:], len(table.names))
        example = Example(image, classes, images[n].stem, pixel_size_in or size)
        examples.append(at_pixel_size(example, pixel_size_um, root))
    return examples, table, channels


def folder_examples(path: str | Path, pixel_size_um: float | None = None, table: ClassTable | None = None,
                    pixel_size_in: float | None = None) -> tuple[list[Example], ClassTable, list[str]]:
    """A folder in either layout, told apart by its files."""
    layout = folder_layout(path)
    if layout == "shared":
        return shared_examples(path, pixel_size_um)
    if layout == "sebre":
        return sebre_examples(path, pixel_size_um, table, pixel_size_in)
    raise UserError(f"{path}: neither a set folder (sections.json) nor a SeBRe folder (section_img_N.jpg with section_masks_N/)")


def split_by_section(examples: list[Example], val: list[str] | float | None, seed: int = 0, what: str = "validation"
                     ) -> tuple[list[Example], list[Example]]:
    """(train, held out) by whole sections: the names listed, or a fraction drawn with `seed`;
    `what` names the held-out part in messages."""
    if not val:
        return examples, []
    if isinstance(val, float):
        if not 0 < val < 1:
            raise UserError(f"validation fraction {val} must be between 0 and 1 (e.g. 0.2)")
        rng = np.random.default_rng(seed)
        picked = {examples[i].name for i in rng.permutation(len(examples))[:max(1, round(val * len(examples)))]}
    else:
        picked = set(val)
        unknown = picked - {e.name for e in examples}
        if unknown:
            raise UserError(f"{what} sections {sorted(unknown)} are not in the data; give section names such as {examples[0].name}")
    train = [e for e in examples if e.name not in picked]
    if not train:
        raise UserError(f"every section went to {what}; keep at least one for training")
    return train, [e for e in examples if e.name in picked]
