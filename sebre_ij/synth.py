"""Synthetic multi-section brain slides for the demo, the tests and the benchmarks.

Real annotated slides are few and heavy, so the demo and the tests train and score on slides drawn
here: sagittal-like mouse sections (olfactory bulb at one end, foliated cerebellum and hindbrain at the
other) stained on bright glass, with a ground-truth class map that follows the staining. Shapes are
analytic (jittered ellipses and bands on a smoothly warped frame) and texture is Beer-Lambert
absorbance of per-region stain, cells and low-frequency variation, all vectorised (no loop over
pixels), so tests and benchmarks draw their slides afresh rather than keep them.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import ndimage as ndi
from scipy.special import ndtri
from skimage.measure import label as connected

CLASSES: list[tuple[str, tuple[int, int, int]]] = [
    ("background", (0, 0, 0)),
    ("cortex", (230, 90, 60)),
    ("hippocampus", (250, 200, 0)),
    ("olfactory", (160, 110, 200)),
    ("striatum_pallidum", (60, 170, 230)),
    ("thalamus", (0, 120, 60)),
    ("hypothalamus", (240, 120, 200)),
    ("midbrain", (120, 60, 30)),
    ("cerebellum", (90, 200, 90)),
    ("hindbrain", (200, 200, 200)),
    ("fiber_tracts", (255, 255, 255)),
    ("ventricles", (40, 40, 200)),
    ("other_brain", (128, 128, 128)),
]
_ID = {name: k for k, (name, _) in enumerate(CLASSES)}

SECTION_UM = (6000.0, 8000.0)  # height, width a section is drawn in; its tissue spans about 8 x 5 mm
_FILL = 0.9  # tissue spans this fraction of its box, so sections keep a rim of glass
_ASPECT = SECTION_UM[0] / SECTION_UM[1]
_UNIT_UM = SECTION_UM[1] / 2  # section coordinates run over [-1, 1] across the width

# Look of each class: neuropil stain (OD), tint (0 = first stain colour, 1 = second), small-cell and
# large-cell area fractions. Differences between neighbours are what makes regions learnable.
_LOOK = np.array(
    [
        (0.00, 0.0, 0.000, 0.000),  # background
        (0.62, 0.15, 0.140, 0.020),  # cortex
        (0.42, 0.55, 0.050, 0.005),  # hippocampus (plus its dark pyramidal layer)
        (0.55, 0.45, 0.160, 0.010),  # olfactory (plus layers)
        (0.50, 0.05, 0.040, 0.006),  # striatum_pallidum (plus pale fibre bundles)
        (0.74, 0.35, 0.050, 0.035),  # thalamus
        (0.40, 0.75, 0.070, 0.004),  # hypothalamus
        (0.58, 0.20, 0.015, 0.030),  # midbrain
        (0.40, 0.30, 0.000, 0.000),  # cerebellum (layers drawn separately)
        (0.46, 0.05, 0.006, 0.045),  # hindbrain
        (0.15, 0.90, 0.010, 0.000),  # fiber_tracts
        (0.03, 0.00, 0.000, 0.000),  # ventricles
        (0.50, 0.50, 0.040, 0.015),  # other_brain
    ],
    dtype=np.float32,
)

# Cells cover a class's area fraction where unit-variance noise exceeds that fraction's quantile.
_THRESHOLD = ndtri(1 - np.clip(_LOOK[:, 2:], 1e-4, 0.5)).astype(np.float32)

# Stain absorbance per unit OD in R, G, B: DAB browns and cresyl-violet (Nissl) purples.
_STAINS = {
    "dab": (np.array([0.27, 0.57, 0.78]), np.array([0.20, 0.62, 0.95])),
    "nissl": (np.array([0.50, 0.85, 0.28]), np.array([0.62, 0.78, 0.20])),
}

# Building blocks in section coordinates (x caudal-positive, y ventral-positive): cx, cy, rx, ry.
_BLOCKS = {
    "cerebrum": (-0.22, -0.06, 0.66, 0.52),
    "olfactory": (-0.86, 0.06, 0.16, 0.17),
    "cerebellum": (0.64, -0.16, 0.30, 0.34),
    "midbrain": (0.30, -0.02, 0.18, 0.34),  # x set by _place
    "hindbrain": (0.58, 0.32, 0.40, 0.19),
    "thalamus": (0.00, 0.09, 0.22, 0.17),  # centre set by _place
    "hypothalamus": (-0.12, 0.39, 0.22, 0.12),
    "striatum": (-0.46, 0.06, 0.22, 0.24),
}
_GEOMETRY_UM = 8.0  # shapes are computed on a grid this coarse (µm/px), then repeated up


class _Section(NamedTuple):
    """Class map plus the coordinates that texture needs to draw layers inside regions."""

    labels: np.ndarray  # (H, W) uint8
    ctx_depth: np.ndarray  # depth through the cortex, 0 at the surface, 1 at the fiber tracts
    hip_depth: np.ndarray  # depth through the hippocampal band, 0 outside, 1 inside
    olf_rho: np.ndarray  # normalised radius in the olfactory bulb
    cb_layer: np.ndarray  # cerebellar layers: 1 molecular, 2 granular, 3 white matter
    um_per_px: float


def synth_section(shape: tuple[int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One brain-like section filling most of `shape` (H, W).

    Returns
    -------
    image : (3, H, W) uint8
        RGB brightfield: stained tissue on bright glass.
    labels : (H, W) uint8
        Class ids into `CLASSES`, 0 outside tissue.
    """
    image = _glass(shape, rng)
    labels = _draw(image, _stain(rng), rng)
    return image, labels


def synth_slide(
    sections: int = 4,
    size: tuple[int, int] = (4096, 4096),
    pixel_size: float = 4.0,
    seed: int = 0,
    stain: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A whole slide of `sections` brain sections on a grid on glass.

    Each section is about 8 x 6 mm at `pixel_size` µm/px (shrunk alike when the slide is too small)
    and varies in rotation, scale, shape and region sizes. One stain per slide, as on a real scanner.

    Returns
    -------
    image : (3, H, W) uint8
    labels : (H, W) uint8
    """
    if sections < 1:
        raise ValueError(f"sections must be >= 1, got {sections}")
    rng = np.random.default_rng(seed)
    image = _glass(size, rng)
    labels = np.zeros(size, np.uint8)
    stain = _stain(rng, stain)
    for r0, c0, h, w in _layout(sections, size, pixel_size, rng):
        window = (slice(r0, r0 + h), slice(c0, c0 + w))
        labels[window] = _draw(image[(slice(None), *window)], stain, rng)
    return image, labels


def _layout(
    sections: int, size: tuple[int, int], pixel_size: float, rng: np.random.Generator
) -> list[tuple[int, int, int, int]]:
    """Boxes (row, col, h, w) for the sections: the grid that shrinks them least, then jitter."""
    box = np.array(SECTION_UM) / _FILL / pixel_size
    best = None
    for cols in range(1, sections + 1):
        rows = -(-sections // cols)
        cell = np.array(size) / (rows, cols)
        shrink = min(1.0, *(0.95 * cell / box))
        if best is None or shrink > best[0]:
            best = (shrink, cols, cell)
    shrink, cols, cell = best
    if min(box * shrink) < 32:
        raise ValueError(f"a {size} slide is too small for {sections} sections at {pixel_size} µm/px")
    out = []
    for i in range(sections):
        h, w = (box * shrink * rng.uniform(0.9, 1.0)).astype(int)
        top = (i // cols) * cell[0] + rng.uniform(0, cell[0] - h)
        left = (i % cols) * cell[1] + rng.uniform(0, cell[1] - w)
        out.append((int(top), int(left), int(h), int(w)))
    return out


def _stain(rng: np.random.Generator, kind: str | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """Two stain colours (OD per channel) to mix per region, and the slide's staining strength."""
    drawn = "dab" if rng.random() < 0.5 else "nissl"
    kind = kind or drawn
    if kind not in _STAINS:
        raise ValueError(f"stain {kind!r} is not one of {', '.join(_STAINS)}")
    a, b = (c * rng.uniform(0.9, 1.1, 3) for c in _STAINS[kind])
    return a.astype(np.float32), b.astype(np.float32), float(rng.uniform(1.3, 2.0))


def _glass(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Bright, slightly tinted glass with a gentle illumination falloff and sensor noise."""
    tint = np.array([244, 242, 237], np.float32) + rng.uniform(-2, 2, 3).astype(np.float32)
    light = 1 + 0.008 * _smooth_noise(shape, 2, rng)
    light += rng.standard_normal(shape, dtype=np.float32) * 0.006
    return np.stack([np.clip(t * light, 0, 255).astype(np.uint8) for t in tint])


def _draw(view: np.ndarray, stain, rng: np.random.Generator) -> np.ndarray:
    """Paint one section into `view` (3, H, W uint8 glass, in place); return its class map."""
    section = _anatomy(view.shape[1:], rng)
    od = _absorbance(section, stain, rng)
    tissue = section.labels > 0
    noise = rng.standard_normal(view.shape[1:], dtype=np.float32) * 2.0
    noise *= tissue
    for ch in range(3):
        lit = view[ch] * np.exp(-od[ch]) + noise
        view[ch] = np.clip(lit + 0.5, 0, 255).astype(np.uint8)
    return section.labels


def _smooth_noise(shape: tuple[int, int], features: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth unit-variance noise with about `features` blobs along the longer side.

    Value noise: a small random grid interpolated with smoothstep weights, written as two small
    matrix products rather than an interpolation per pixel.
    """
    step = max(shape) / features
    grid = rng.standard_normal([int(n / step) + 3 for n in shape]).astype(np.float32)

    def weights(n: int, m: int) -> np.ndarray:
        pos = np.arange(n, dtype=np.float32) / step + 0.5
        i = pos.astype(int)
        f = pos - i
        f = f * f * (3 - 2 * f)
        out = np.zeros((n, m), np.float32)
        out[np.arange(n), i] = 1 - f
        out[np.arange(n), i + 1] = f
        return out

    return weights(shape[0], grid.shape[0]) @ grid @ weights(shape[1], grid.shape[1]).T


def _frame(shape: tuple[int, int], step: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Section coordinates (x, y) on a grid of every `step`-th pixel of a section box `shape`.

    Rotated, scaled, maybe mirrored and smoothly warped: one unit is half a section width, so the
    anatomy is written once in these coordinates and each section gets its own pose and shape.
    """
    h, w = shape
    unit = _FILL * min(w / 2, h / (2 * _ASPECT))
    angle = rng.normal(0, 0.07)
    sx, sy = np.exp(rng.normal(0, 0.04, 2))
    flip = rng.choice([-1.0, 1.0])
    centre = (step - 1) / 2
    rows = ((np.arange(0, h, step, dtype=np.float32) + centre - (h - 1) / 2) / unit)[:, None]
    cols = ((np.arange(0, w, step, dtype=np.float32) + centre - (w - 1) / 2) / unit)[None, :]
    c, s = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    x = (c * cols + s * rows) * np.float32(sx * flip)
    y = (c * rows - s * cols) * np.float32(sy)
    x += 0.035 * _smooth_noise(x.shape, 3, rng)
    y += 0.035 * _smooth_noise(x.shape, 3, rng)
    return x, y


def _jitter(rng: np.random.Generator) -> dict[str, tuple[float, float, float, float]]:
    """The building blocks with their centres and radii jittered, so regions differ in size."""
    out = {}
    for name, (cx, cy, rx, ry) in _BLOCKS.items():
        dx, dy = rng.normal(0, 0.02, 2)
        gx, gy = np.exp(rng.normal(0, 0.07, 2))
        out[name] = (float(cx + dx), float(cy + dy), float(rx * gx), float(ry * gy))
    return out


def _rho(x: np.ndarray, y: np.ndarray, block: tuple[float, float, float, float]) -> np.ndarray:
    """Normalised elliptical radius: < 1 inside the block."""
    cx, cy, rx, ry = block
    return np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)


def _angle(x: np.ndarray, y: np.ndarray, block: tuple[float, float, float, float]) -> np.ndarray:
    """Angle around the block's centre in degrees: -90 dorsal, 0 caudal, 90 ventral."""
    cx, cy, rx, ry = block
    return np.degrees(np.arctan2((y - cy) / ry, (x - cx) / rx))


def _folia(x: np.ndarray, y: np.ndarray, block, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Distance-like field of the cerebellum (< 0 inside) with fissures cut between folia, and
    how near each pixel is to a lobe's axis (1 on it), where the white matter branches run.

    Deep fissures of varying depth split the lobes and shallow ones between them split folia,
    around the dorsal-caudal-ventral arc only (not where it sits on the brainstem).
    """
    theta = np.radians(_angle(x, y, block))
    count = rng.uniform(9, 12)
    phase = rng.uniform(0, 2 * np.pi)
    depth = 0.3 + 0.2 * np.cos(count / 3 * theta + phase) ** 2
    lobes = np.clip(np.cos(count * theta + phase), 0, None) ** 16 * depth
    folia = np.clip(-np.cos(count * theta + phase), 0, None) ** 64 * 0.15
    notch = np.maximum(lobes, folia) * (np.cos(theta - 0.4) > -0.3)
    field = (_rho(x, y, block) / (1 - notch) - 1) * min(block[2:])
    return field, -np.cos(count * theta + phase)


def _smooth_union(fields: list[np.ndarray], k: float = 0.025) -> np.ndarray:
    """Union of distance-like fields with rounded joins, as where brain parts meet."""
    low = np.minimum.reduce(fields)
    total = sum(np.exp((low - f) / k) for f in fields)
    return low - k * np.log(total)


def _place(b: dict, cc: float, rng: np.random.Generator) -> None:
    """Add the hippocampal C under the fiber tracts and seat the thalamus in it, the midbrain
    behind it, so that the C never cuts another region in two."""
    cx, cy, rx, ry = b["cerebrum"]
    hx = cx + rx * rng.uniform(0.36, 0.42)
    hr = rng.uniform(0.22, 0.25)
    top = cy - ry * cc * np.sqrt(max(1 - ((hx - cx) / (rx * cc)) ** 2, 0.0))
    hip = b["hippocampus"] = (float(hx), float(top + hr - 0.02), hr * rng.uniform(1.0, 1.15), hr)
    _, _, tx, ty = b["thalamus"]
    b["thalamus"] = (hip[0] - 0.2 * hip[2], hip[1] + 0.3 * hip[3], tx, ty)
    _, my, mx, mry = b["midbrain"]
    b["midbrain"] = (hip[0] + hip[2] + 0.7 * mx, my, mx, mry)


def _anatomy(shape: tuple[int, int], rng: np.random.Generator) -> _Section:
    """Class map of one section: tissue outline, then regions painted in order of precedence.

    Shapes are evaluated on a grid of about `_GEOMETRY_UM` µm and repeated up to `shape`: region
    outlines need no finer detail, and this is most of the speed.
    """
    um_per_px = _UNIT_UM / (_FILL * min(shape[1] / 2, shape[0] / (2 * _ASPECT)))
    step = max(1, round(_GEOMETRY_UM / um_per_px))
    x, y = _frame(shape, step, rng)
    t_ctx, t_cc = rng.uniform(0.2, 0.26), rng.uniform(0.05, 0.065)
    ctx, cc = 1 - t_ctx, 1 - t_ctx - t_cc
    b = _jitter(rng)
    _place(b, cc, rng)
    rho = {name: _rho(x, y, block) for name, block in b.items()}
    cb, lobe_axis = _folia(x, y, b["cerebellum"], rng)
    parts = ["cerebrum", "midbrain", "hindbrain", "hypothalamus"]
    parts += ["olfactory"] * (rng.random() < 0.85)
    outline = [(rho[n] - 1) * min(b[n][2:]) for n in parts] + [cb]
    tissue = _smooth_union(outline) + 0.004 * _smooth_noise(x.shape, 40, rng) < 0

    r, ang = rho["cerebrum"], _angle(x, y, b["cerebrum"])
    hip_r, hip_ang, hip_in = rho["hippocampus"], _angle(x, y, b["hippocampus"]), rng.uniform(0.45, 0.55)
    lab = np.where(tissue, _ID["other_brain"], 0).astype(np.uint8)
    paint = [
        ("hindbrain", rho["hindbrain"] < 1),
        ("midbrain", rho["midbrain"] < 1),
        ("thalamus", rho["thalamus"] < 1),
        ("hypothalamus", rho["hypothalamus"] < 1),
        ("striatum_pallidum", rho["striatum"] < 1),
        ("cortex", (r >= ctx) & (r < 1.2) & ((ang < 15) | (ang > 140))),
        ("hippocampus", (hip_r >= hip_in) & (hip_r < 1) & (hip_ang > -165) & (hip_ang < 75)),
        ("fiber_tracts", (r >= cc) & (r < ctx) & (ang > -160) & (ang < -15)),
        ("olfactory", rho["olfactory"] < 1),
        ("cerebellum", cb < 0),
    ]
    if rng.random() < 0.7:
        paint.append(("ventricles", (r >= cc - 0.08) & (r < cc) & (ang > -165) & (ang < -120)))
    for name, where in paint:
        lab[where] = _ID[name]
    lab[~tissue] = 0
    _merge_fragments(lab)
    cb_layer = _cerebellar_layers(lab == _ID["cerebellum"], lobe_axis, step * um_per_px / _UNIT_UM)

    def up(a: np.ndarray) -> np.ndarray:
        return a.repeat(step, 0).repeat(step, 1)[: shape[0], : shape[1]]

    fields = ((1 - r) / t_ctx, (hip_r - hip_in) / (1 - hip_in), rho["olfactory"], cb_layer)
    return _Section(up(lab), *(up(f) for f in fields), um_per_px)


def _cerebellar_layers(region: np.ndarray, lobe_axis: np.ndarray, units_per_px: float) -> np.ndarray:
    """Cerebellar layer per pixel: 1 molecular (surface), 2 granular, 3 white matter (a trunk
    with a branch up each lobe: the arbor vitae), 0 outside.

    Depth below the surface comes from a distance transform on the region's bounding box only,
    since one over the whole section would dominate the run time.
    """
    depth = np.zeros(region.shape, np.float32)
    rows, cols = np.nonzero(region)
    if rows.size:
        box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
        depth[box] = ndi.distance_transform_edt(np.pad(region[box], 1))[1:-1, 1:-1] * units_per_px
    white = (depth > 0.12) | ((depth > 0.06) & (lobe_axis > 0.4))
    return (region * (1 + (depth > 0.02) + white)).astype(np.uint8)


def _merge_fragments(lab: np.ndarray) -> None:
    """Give every piece of a class but its largest to the nearest region that keeps its piece.

    Precedence painting leaves slivers and pockets where shapes barely overlap or enclose some
    leftover tissue; the model should see each region as one solid blob, as in an atlas.
    """
    comp = connected(lab, background=0, connectivity=1)
    sizes = np.bincount(comp.ravel())
    cls = np.zeros_like(sizes)
    cls[comp.ravel()] = lab.ravel()
    largest = np.zeros(len(CLASSES), sizes.dtype)
    np.maximum.at(largest, cls[1:], sizes[1:])
    small = sizes < largest[cls]
    small[0] = False
    drop = small[comp]
    if drop.any():
        nearest = ndi.distance_transform_edt(drop | (lab == 0), return_distances=False, return_indices=True)
        lab[drop] = lab[tuple(nearest)][drop]


def _noise_field(shape: tuple[int, int], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance white noise smoothed to blobs of about `sigma` px: the raw material of cells."""
    field = ndi.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma)
    return field * np.float32(2 * sigma * np.sqrt(np.pi))


def _cells(field: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    """Soft round cells where a unit-variance `field` passes `threshold` (per pixel).

    Only the rare peaks of smooth noise pass a high threshold, and those are round and separate,
    which is what stained somata look like; the threshold can change from region to region.
    """
    return np.clip((field - threshold) * 2.0, 0, 1)


def _absorbance(section: _Section, stain, rng: np.random.Generator) -> np.ndarray:
    """Optical density (3, H, W) of one section: stained neuropil, cells and region layers."""
    lab, um = section.labels, section.um_per_px
    shape = lab.shape
    look = _LOOK[lab]
    fine = _noise_field(shape, max(4.5 / um, 0.7), rng)
    coarse = _noise_field(shape, max(8.0 / um, 1.0), rng)
    small = _cells(fine, _THRESHOLD[lab, 0])
    large = _cells(coarse, _THRESHOLD[lab, 1])
    blur = max(8.0 / um, 1.0)
    base = ndi.gaussian_filter(look[..., 0] + _layers(section, small, large), blur)
    mix = ndi.gaussian_filter(look[..., 1], blur)
    base *= 1 + 0.2 * _smooth_noise(shape, 5, rng) + 0.08 * _smooth_noise(shape, 60, rng)
    base *= 1 + 0.1 * fine
    cells = (0.9 * small + 1.3 * large) * (lab > 0)
    first, second, strength = stain
    od = (base * (1 - mix) * strength)[None] * first[:, None, None]
    od += (base * mix * strength)[None] * second[:, None, None]
    od += (cells * strength)[None] * (first * 1.1)[:, None, None]
    return np.maximum(od, 0)


def _layers(section: _Section, small: np.ndarray, large: np.ndarray) -> np.ndarray:
    """Extra OD for structure inside regions: pale cortical layer 1, the dark pyramidal layer of
    the hippocampus, olfactory bulb layers, pale striatal fibre bundles and the cerebellar
    molecular, granular and white-matter layers."""
    lab, layer, o = section.labels, section.cb_layer, section.olf_rho
    out = (lab == _ID["cortex"]) * (section.ctx_depth < 0.1) * np.float32(-0.25)
    pyramidal = np.exp(-(((section.hip_depth - 0.55) / 0.1) ** 2))
    out += (lab == _ID["hippocampus"]) * pyramidal * (0.8 + 0.8 * small)
    out += (lab == _ID["olfactory"]) * (0.45 * (o < 0.5) + 1.2 * ((o > 0.68) & (o < 0.85)) * large)
    out -= (lab == _ID["striatum_pallidum"]) * 0.6 * large
    out += (layer == 2) * (0.9 + 0.6 * small) - (layer == 3) * 0.2
    return out
