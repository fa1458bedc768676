"""Training sections cut from the Allen CCFv3 atlas at random planes, damaged as real sections are.

Every label the project is scored on is a cut through one atlas, so the atlas holds the anatomy at
every plane; what it lacks is appearance, which `render` draws from the fine structure ids. One
training section (`atlas_section`) is made in five steps:

1. `random_plane`: coronal, sagittal or horizontal at a random depth, tilted as real cuts are, the
   tissue shrunk or stretched (a different scale along rows and columns);
2. `cut_section`: the plane's class map and structure ids, cropped to the brain plus a glass margin;
3. `damage`: hemisections and pieces torn off (their labels go with them), tears (labels kept, as
   a registration's are), folds, bubbles and debris (the picture only);
4. `crop`: the box of what is left, plus the margin;
5. `render.render`: brightfield RGB or fluorescence, in a random appearance per structure or from
   the average template cut at the same plane (`section_template`, cut only when a look needs it).

Planes follow QuickNII's anchoring: nine numbers `o, u, v` in 25 µm voxels; the pixel at column x,
row y of a width x height section lies at `o + (x + 0.5) / width * u + (y + 0.5) / height * v`, and
its label is the voxel that point falls in (floor), so `cut` gives the GLTa label images exactly.

`python -m sebre_ij.atlas_preview OUT.png --atlas DIR --real GLTA_DIR` writes generated sections
beside real ones (`atlas_preview.py`).

Atlas: Allen Institute for Brain Science, Allen Mouse Brain Common Coordinate Framework v3 (2017),
Wang et al., Cell 2020; used under the Allen Institute's terms of use (research use, with citation).
Random appearance per label: SynthSeg, Billot et al., Medical Image Analysis 2023.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from functools import cache
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage as ndi

from .errors import UserError
from .faults import bubble, crack, edge_piece, midline_crack, specks
from .render import Look, StructureTree, render

ATLAS_ENV = "SEBRE_ATLAS"
ATLAS_VERSION = "Allen CCFv3 2017, 25 um annotation, 100 um template"
"""What a model card names as the atlas its generated sections came from."""
ATLAS_FILES = ("classes_25um.tif", "annotation_25um.tif", "structures.csv", "template_100um.tif")
VOXEL_UM = 25.0
TEMPLATE_STEP = 4
MIDLINE_X = 228.0
MIN_TISSUE_MM2 = 2.0

ORIENTATIONS = {
    "coronal": ((-1.0, 0.0, 0.0), (0.0, 0.0, -1.0), 1),
    "sagittal": ((0.0, -1.0, 0.0), (0.0, 0.0, -1.0), 0),
    "horizontal": ((-1.0, 0.0, 0.0), (0.0, -1.0, 0.0), 2),
}
"""Column direction, row direction (dorsal side up, as QuickNII shows them) and normal axis of
each orientation, in atlas axes: 0 = left-right, 1 = posterior -> anterior, 2 = inferior -> superior."""


@dataclass(frozen=True)
class Atlas:
    """The CCFv3 volumes (axes as in ORIENTATIONS' note) and the structure tree.

    `classes` (uint8, 25 µm) the 12 classes, 0 outside the brain; `annotation` (uint32, 25 µm) Allen
    structure ids; `template` (float32 in [0, 1], 100 µm) the two-photon average; `box` the first
    and one past the last voxel holding brain along each axis."""

    classes: np.ndarray
    annotation: np.ndarray
    template: np.ndarray
    tree: StructureTree
    box: tuple[tuple[int, int, int], tuple[int, int, int]]

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.classes.shape

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.tree.class_names


def atlas_folder(path: str | Path | None = None) -> Path:
    """The atlas folder: `path`, else $SEBRE_ATLAS; it must hold the four CCFv3 files."""
    found = path or os.environ.get(ATLAS_ENV)
    if not found:
        raise UserError(
            f"no atlas folder given; pass atlas=DIR (the folder holding {', '.join(ATLAS_FILES)}) or set ${ATLAS_ENV}"
        )
    folder = Path(found)
    missing = [name for name in ATLAS_FILES if not (folder / name).is_file()]
    if missing:
        raise UserError(
            f"{folder}: not a CCFv3 atlas folder (no {', '.join(missing)}); pass atlas=DIR holding "
            f"{', '.join(ATLAS_FILES)}"
        )
    return folder


def read_tree(path: Path) -> StructureTree:
    """The structure tree of structures.csv: id, structure_id_path, class_index, class_name."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    try:
        rows.sort(key=lambda r: int(r["id"]))
        ids = np.array([int(r["id"]) for r in rows], np.int64)
        chains = [[int(p) for p in r["structure_id_path"].strip("/").split("/") if p] for r in rows]
        classes = np.array([int(r["class_index"]) for r in rows], np.uint8)
        names = {int(r["class_index"]): r["class_name"] for r in rows}
    except (KeyError, ValueError) as exc:
        raise UserError(
            f"{path}: not the atlas's structure table ({exc!r}); use the structures.csv of the CCFv3 folder"
        ) from None
    index = {i: k for k, i in enumerate(ids.tolist())}
    parents = np.array([index.get(c[-2], k) if len(c) > 1 else k for k, c in enumerate(chains)], np.int32)
    depth = np.array([len(c) for c in chains], np.int32)
    return StructureTree(ids, parents, depth, classes, tuple(names.get(i, f"class{i}") for i in range(max(names) + 1)))


def load_atlas(path: str | Path | None = None) -> Atlas:
    """Read the CCFv3 folder (`path`, else $SEBRE_ATLAS); its cost is in benchmarks/README.md."""
    folder = atlas_folder(path)
    tree = read_tree(folder / "structures.csv")
    classes = tifffile.imread(folder / "classes_25um.tif")
    annotation = tifffile.imread(folder / "annotation_25um.tif")
    template = tifffile.imread(folder / "template_100um.tif").astype(np.float32)
    if annotation.shape != classes.shape or tuple(-(-n // TEMPLATE_STEP) for n in classes.shape) != template.shape:
        raise UserError(
            f"{folder}: volume shapes {classes.shape}, {annotation.shape}, {template.shape} disagree; "
            "use the CCFv3 files as distributed"
        )
    template = np.clip(template / max(float(np.percentile(template, 99.9)), 1e-6), 0, 1)
    plan = classes.any(axis=2)
    bounds = [np.flatnonzero(a) for a in (plan.any(1), plan.any(0), classes.any(axis=(0, 1)))]
    box = tuple(int(b[0]) for b in bounds), tuple(int(b[-1]) + 1 for b in bounds)
    return Atlas(classes.astype(np.uint8), annotation, template, tree, box)


@dataclass(frozen=True)
class Plane:
    """A section plane in QuickNII's anchoring (25 µm voxels) and the pixels it is cut into."""

    origin: tuple[float, float, float]
    u: tuple[float, float, float]
    v: tuple[float, float, float]
    width: int
    height: int

    @classmethod
    def from_anchoring(cls, anchoring: list[float], width: int, height: int) -> Plane:
        """The plane of QuickNII's nine numbers o, u, v for a `width` x `height` image."""
        o, u, v = (tuple(float(x) for x in anchoring[i : i + 3]) for i in (0, 3, 6))
        return cls(o, u, v, int(width), int(height))

    def points(self, window: tuple[int, int, int, int] | None = None) -> np.ndarray:
        """(3, h, w) voxel coordinates of pixel centres; `window` (top, left, h, w) picks a part.

        Notes
        -----
        Each point is computed alone, so a window's points equal the same part of the whole grid's."""
        top, left, h, w = window or (0, 0, self.height, self.width)
        x = (np.arange(left, left + w) + 0.5) / self.width
        y = (np.arange(top, top + h) + 0.5) / self.height
        o, u, v = (np.asarray(a, np.float64)[:, None, None] for a in (self.origin, self.u, self.v))
        return o + x[None, None, :] * u + y[None, :, None] * v


def cut(volume: np.ndarray, points: np.ndarray, fill=0) -> np.ndarray:
    """The voxels the points fall in; `fill` outside the volume.

    Notes
    -----
    Equals volume[floor(p0), floor(p1), floor(p2)] at each point inside: QuickNII's rule, which
    with a GLTa anchoring and classes_25um.tif gives that section's label image pixel for pixel."""
    idx = np.floor(points).astype(np.int64)
    inside = np.all((idx >= 0) & (idx < np.asarray(volume.shape)[:, None, None]), axis=0)
    out = np.full(points.shape[1:], fill, volume.dtype)
    out[inside] = volume[idx[0][inside], idx[1][inside], idx[2][inside]]
    return out


def cut_template(template: np.ndarray, points: np.ndarray) -> np.ndarray:
    """The 100 µm template at 25 µm voxel coordinates, trilinear (template voxel i is centred at 4i + 2)."""
    coords = (points / TEMPLATE_STEP - 0.5).reshape(3, -1)
    return ndi.map_coordinates(template, coords, order=1, mode="constant").reshape(points.shape[1:]).astype(np.float32)


def _rotation(axis: np.ndarray, degrees: float) -> np.ndarray:
    """Rodrigues' rotation by `degrees` about the unit vector `axis`."""
    a = math.radians(degrees)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(a) * k + (1 - math.cos(a)) * k @ k


@dataclass(frozen=True)
class SectionRecipe:
    """How training sections are drawn from the atlas; `to_dict` goes into the model card.

    Attributes
    ----------
    pixel_size_um : the sections' pixel size.
    orientations : weight of each plane orientation.
    tilt_deg : sd of each out-of-plane tilt (clipped at 2.5 sd). The 23 GLTa anchorings share one
        tilt, 0.19 deg dorsoventral and 0.08 deg mediolateral (DeepSlice fits one angle per brain),
        so the set measures no spread between brains; 3 deg is a choice that lets them differ by a few.
    roll_deg : sd of the in-plane rotation; GLTa's: 0.8 +- 1.0 deg (-1.6 to 3.0).
    shrink : range of atlas µm per section µm along the columns (tissue shrunk above 1, swollen below).
    aspect : range of the rows' atlas µm per pixel over the columns'; GLTa's: 1.16 +- 0.03
        (1.09 to 1.20), its sections flatter than the atlas.
    hemisection, missing, tear, fold, bubble, debris : share of sections with each fault.
    margin_px : glass kept around the tissue.
    look : how sections are pictured (`render.Look`).
    """

    pixel_size_um: float = 50.0
    orientations: dict = field(default_factory=lambda: {"coronal": 0.7, "sagittal": 0.2, "horizontal": 0.1})
    tilt_deg: float = 3.0
    roll_deg: float = 1.0
    shrink: tuple[float, float] = (0.9, 1.1)
    aspect: tuple[float, float] = (0.95, 1.25)
    hemisection: float = 0.15
    missing: float = 0.2
    tear: float = 0.3
    fold: float = 0.1
    bubble: float = 0.1
    debris: float = 0.3
    margin_px: int = 8
    look: Look = field(default_factory=Look)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> SectionRecipe:
        """The recipe `to_dict` wrote (lists back to tuples)."""

        def tupled(d: dict) -> dict:
            return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}

        known = {f.name for f in fields(cls)}
        settings = tupled({k: v for k, v in values.items() if k in known and k != "look"})
        return cls(**settings, look=Look(**tupled(values.get("look", {}))))


def _tilted(col: np.ndarray, row: np.ndarray, recipe: SectionRecipe, rng: np.random.Generator) -> tuple:
    """The plane's directions turned out of plane about each and in plane about the normal."""
    limit = 2.5 * recipe.tilt_deg
    pitch, yaw = np.clip(rng.normal(0.0, recipe.tilt_deg, 2), -limit, limit)
    turn = _rotation(col, pitch) @ _rotation(row, yaw) @ _rotation(np.cross(col, row), rng.normal(0.0, recipe.roll_deg))
    return turn @ col, turn @ row


def random_plane(atlas: Atlas, recipe: SectionRecipe, rng: np.random.Generator) -> tuple[Plane, str]:
    """A plane at a random depth, covering the brain's box at the recipe's pixel size and margin."""
    names = list(recipe.orientations)
    weights = np.array([recipe.orientations[n] for n in names], float)
    orientation = names[int(rng.choice(len(names), p=weights / weights.sum()))]
    col, row, axis = ORIENTATIONS[orientation]
    col, row = _tilted(np.array(col), np.array(row), recipe, rng)
    lo, hi = (np.array(b, float) for b in atlas.box)
    centre = (lo + hi) / 2
    centre[axis] = rng.uniform(lo[axis] + 4, hi[axis] - 4)
    step_col = recipe.pixel_size_um * rng.uniform(*recipe.shrink) / VOXEL_UM
    step_row = step_col * rng.uniform(*recipe.aspect)
    corners = np.array([[(lo, hi)[(c >> i) & 1][i] for i in range(3)] for c in range(8)]) - centre
    spans = []
    for direction, step in ((col, step_col), (row, step_row)):
        along = corners @ direction
        spans.append((along.min() - recipe.margin_px * step, math.ceil(np.ptp(along) / step) + 2 * recipe.margin_px))
    (c0, width), (r0, height) = spans
    origin = centre + c0 * col + r0 * row
    plane = Plane(tuple(origin), tuple(width * step_col * col), tuple(height * step_row * row), width, height)
    return plane, orientation


@dataclass
class Section:
    """One section: its maps, and where they lie in its plane's pixel grid.

    `classes` is the truth; `tissue` where tissue is seen (tears and pieces torn off are not);
    `removed` where damage took tissue with its labels; `overlay` masks that change the picture
    only; the maps are the plane's pixels from row `top`, column `left`."""

    classes: np.ndarray
    structures: np.ndarray
    tissue: np.ndarray
    removed: np.ndarray
    plane: Plane
    top: int
    left: int
    orientation: str = ""
    overlay: dict = field(default_factory=dict)

    def points(self) -> np.ndarray:
        """(3, H, W) voxel coordinates of the section's pixels."""
        return self.plane.points((self.top, self.left, *self.classes.shape))


def _box(mask: np.ndarray, margin: int) -> tuple[slice, slice]:
    """The mask's bounding box grown by `margin`, within the array."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return (
        slice(max(rows[0] - margin, 0), min(rows[-1] + 1 + margin, mask.shape[0])),
        slice(max(cols[0] - margin, 0), min(cols[-1] + 1 + margin, mask.shape[1])),
    )


def crop(section: Section, margin: int) -> Section:
    """The section cut down to the box of its labels plus `margin` pixels of glass."""
    ys, xs = _box(section.classes > 0, margin)
    parts = {
        f.name: getattr(section, f.name)[ys, xs]
        for f in fields(section)
        if isinstance(getattr(section, f.name), np.ndarray)
    }
    overlay = {k: v[ys, xs] for k, v in section.overlay.items()}
    return replace(section, **parts, overlay=overlay, top=section.top + ys.start, left=section.left + xs.start)


def cut_section(atlas: Atlas, plane: Plane, margin: int, orientation: str = "") -> Section | None:
    """The plane's maps cropped to the brain plus `margin`; None where it holds under MIN_TISSUE_MM2."""
    classes = cut(atlas.classes, plane.points())
    pixel_mm2 = (np.linalg.norm(plane.u) / plane.width) * (np.linalg.norm(plane.v) / plane.height) * VOXEL_UM**2 / 1e6
    if np.count_nonzero(classes) * pixel_mm2 < MIN_TISSUE_MM2:
        return None
    ys, xs = _box(classes > 0, margin)
    points = plane.points((ys.start, xs.start, ys.stop - ys.start, xs.stop - xs.start))
    classes = classes[ys, xs]
    structures = atlas.tree.index(cut(atlas.annotation, points))
    removed = np.zeros(classes.shape, bool)
    return Section(classes, structures, classes > 0, removed, plane, ys.start, xs.start, orientation)


def section_template(atlas: Atlas, section: Section) -> Callable[[], np.ndarray]:
    """A function giving the average template at the section's pixels, cut on its first call."""
    return cache(lambda: cut_template(atlas.template, section.points()))


def damage(section: Section, recipe: SectionRecipe, rng: np.random.Generator) -> Section:
    """Real sections' faults, drawn at random.

    Notes
    -----
    Hemisections and pieces torn off the edge take their labels: `classes` becomes 0 there and
    `removed` marks them. Tears keep their labels (as a registration's do) and only lose `tissue`;
    folds, bubbles and debris are `overlay` masks the picture alone shows. No damage adds a class."""
    classes, tissue = section.classes, section.tissue
    gone = np.zeros(classes.shape, bool)
    x = section.points()[0] if section.orientation != "sagittal" else None
    if x is not None and rng.random() < recipe.hemisection:
        gone |= (x - MIDLINE_X + rng.normal(0.0, 3.0)) * rng.choice([-1, 1]) < 0
    if rng.random() < recipe.missing:
        for _ in range(int(rng.integers(1, 3))):
            if (tissue & ~gone).any():
                gone |= edge_piece(tissue & ~gone, rng)
    gone &= tissue
    if gone.sum() == tissue.sum():
        gone[:] = False
    tissue = tissue & ~gone
    if rng.random() < recipe.tear:
        midline = x is not None and rng.random() < 0.5
        tissue = tissue & ~(midline_crack(x - MIDLINE_X, tissue, rng) if midline else crack(tissue, rng))
    overlay = {}
    if rng.random() < recipe.fold:
        overlay["fold"] = crack(tissue, rng) & tissue
        overlay["fold"] = ndi.binary_dilation(overlay["fold"], iterations=int(rng.integers(1, 4)))
    if rng.random() < recipe.bubble:
        overlay["bubble"], overlay["bubble_rim"] = bubble(classes.shape, rng)
    if rng.random() < recipe.debris:
        overlay["debris"] = specks(classes.shape, rng)
    return replace(
        section, classes=np.where(gone, 0, classes).astype(np.uint8), tissue=tissue, removed=gone, overlay=overlay
    )


def atlas_section(
    atlas: Atlas, recipe: SectionRecipe, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, Section]:
    """One training section: image (C, H, W) float32 in [0, 1] (RGB brightfield or one-channel
    fluorescence), class map (H, W) uint8 in the classes of structures.csv, and the section."""
    section = None
    while section is None:
        plane, orientation = random_plane(atlas, recipe, rng)
        section = cut_section(atlas, plane, recipe.margin_px, orientation)
    section = crop(damage(section, recipe, rng), recipe.margin_px)
    return picture(atlas, section, recipe, rng), section.classes, section


def picture(atlas: Atlas, section: Section, recipe: SectionRecipe, rng: np.random.Generator) -> np.ndarray:
    """The section rendered in one of the recipe's looks (render.render), from its structures."""
    return render(
        section.structures,
        section.tissue,
        section_template(atlas, section),
        section.overlay,
        atlas.tree,
        recipe.pixel_size_um,
        recipe.look,
        rng,
    )
