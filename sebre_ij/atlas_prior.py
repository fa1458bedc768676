"""The Allen atlas as a prior on a section's class probabilities.

Every section a mouse model meets is a cut through one brain whose anatomy the Allen CCFv3 holds. A
model's class maps err by patches (a region too large here, missing there); the atlas cut at the
section's plane errs only by how well that plane is found and how far the brain differs from the
average. `AtlasPrior.apply` weighs one against the other, for one tile's probabilities, in three
steps (the model sees a whole mouse section in one tile: 320 px at 50 µm/px):

1. `whole_section`: the section is the largest connected piece of tissue (background probability
   under one half); a piece touching the tile's edge is not whole, and gets no prior.
2. `fit_plane`: the plane through the atlas whose cut best explains the probabilities: the mean log
   probability, over the section and a wide ring of glass around it, of the class the cut gives
   each pixel. Eight numbers (`Plane`): the section centre's place in the atlas, the plane's tilts,
   the in-plane angle and the two in-plane scales; and whether the section is a hemisection, one
   side of the atlas's midline only. A coarse search over anteroposterior position, angle and the
   three choices of half (scale from the areas), then Powell's method from the best few starts.
3. `fuse`: log p + weight x log q, q the cut's classes softened at their edges, as probabilities
   again. Where the cut and the model's own classes agree on less than `MIN_AGREEMENT` of the
   section (a sagittal section, a brain of another species, a model of other regions), the fit is
   not trusted and the probabilities stay as the model gave them.

The volume is the CCFv3 class volume at 50 µm the package carries (`VOLUME`, 0.3 MB; Allen Institute
for Brain Science, CCFv3 2017, Wang et al., Cell 2020). A model uses the prior when its card says so
(`ModelCard.atlas_prior`, the weight) and its classes include the volume's.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from scipy import ndimage as ndi
from scipy.optimize import minimize

VOLUME = Path(__file__).resolve().parent / "data" / "ccf_classes_50um.npz"
VOXEL_MM = 0.05
MIN_AGREEMENT = 0.3  # share of the section where cut and model agree, below which the fit is not used
EDGE_PX = 1.0  # sd of the blur softening the cut's class edges (registration is not exact)
FLOOR = 0.1  # share of the cut's probability spread over all classes: the model may still overrule it
LOG_FLOOR = 1e-4  # probabilities below this count as this where their log is taken: what a confident error costs
PAD = 64  # voxels of background padding the volume
RING_MM = 0.8  # glass around the section the fit also explains (it holds the brain's outline)
ANGLES = np.radians(np.arange(0, 360, 15))  # in-plane angles of the coarse search
AP_STEP = 4  # voxels between anteroposterior positions of the coarse search (0.2 mm)
STARTS = 2  # best coarse candidates refined
COARSE_PX = 600  # pixels (section and ring) the coarse search scores (a fixed sample: the same fit each run)
FINE_PX = 2000  # and the refinement
MAX_STEPS = 500  # objective evaluations of each refinement


class Plane(NamedTuple):
    """Where a section lies in the atlas: its centre (mm along the atlas axes: left-right,
    posterior-anterior, inferior-superior), tilts about the left-right (`pitch`) and
    dorsoventral (`yaw`) axes, in-plane angle (radians) and scales (atlas mm per section mm): the
    eight numbers the fit searches. `half` is which of the plane holds the section: 0 all of it, 1
    or -1 only the atlas's side of greater or lesser left-right position, a hemisection."""

    lr: float
    ap: float
    dv: float
    pitch: float
    yaw: float
    angle: float
    sx: float
    sy: float
    half: int = 0


@dataclass(frozen=True)
class ClassVolume:
    """A class volume (axes: left-right, posterior-anterior, inferior-superior; VOXEL_MM voxels)
    and the names of its classes."""

    classes: np.ndarray
    names: tuple[str, ...]

    @functools.cached_property
    def coronal_centres(self) -> list[tuple[int, int, float, float, int]]:
        """(ap voxel, half, lr mm, dv mm, brain voxels) of the coronal slices the coarse search starts
        from, whole (half 0) and each side of the midline (1: greater left-right position, -1: lesser)."""
        out = []
        middle = self.classes.shape[0] / 2
        for j in range(AP_STEP // 2, self.classes.shape[1], AP_STEP):
            i, k = np.nonzero(self.classes[:, j, :])
            if len(i) < 50:
                continue
            for half in (0, 1, -1):
                kept = (i + 0.5 - middle) * half >= 0
                out.append(
                    (j, half, (i[kept].mean() + 0.5) * VOXEL_MM, (k[kept].mean() + 0.5) * VOXEL_MM, int(kept.sum()))
                )
        return out

    @functools.cached_property
    def padded(self) -> np.ndarray:
        """The classes with PAD voxels of background around them: a clipped index then finds "outside"."""
        return np.pad(self.classes, PAD)


@functools.lru_cache(maxsize=1)
def read_volume() -> ClassVolume:
    """The package's class volume."""
    with np.load(VOLUME, allow_pickle=False) as data:
        return ClassVolume(data["classes"], tuple(str(n) for n in data["names"]))


def voxel_map(plane: Plane) -> tuple[np.ndarray, np.ndarray]:
    """(2, 3) matrix and (3,) offset taking section points ((N, 2) mm from the section's centre, x to
    the right, y down) to atlas voxel coordinates: points @ matrix + offset.

    Notes
    -----
    Point (x, y) goes to (centre + a * across + b * down) / VOXEL_MM, with a = sx (cos t x - sin t y)
    and b = sy (sin t x + cos t y): rotated and scaled in plane, then laid along the tilted coronal
    axes."""
    c, s = math.cos(plane.angle), math.sin(plane.angle)
    across = (math.cos(plane.yaw), math.sin(plane.yaw), 0.0)
    down = (0.0, math.sin(plane.pitch), -math.cos(plane.pitch))
    matrix = [
        [plane.sx * c * u + plane.sy * s * v for u, v in zip(across, down)],
        [plane.sy * c * v - plane.sx * s * u for u, v in zip(across, down)],
    ]
    return np.array(matrix) / VOXEL_MM, np.array([plane.lr, plane.ap, plane.dv]) / VOXEL_MM


def cut(volume: ClassVolume, plane: Plane, points: np.ndarray) -> np.ndarray:
    """The volume's class at each point (0 outside it, and past the midline from a hemisection's
    `half`): the voxel holding it (cut_many of one plane)."""
    return cut_many(volume, [plane], points)[0]


def cut_many(volume: ClassVolume, planes: list[Plane], points: np.ndarray) -> np.ndarray:
    """(planes, N): `cut` of each plane at the same points, one axis at a time for all planes at
    once (the fit's coarse search scores thousands of planes, its refinement one plane thousands of
    times)."""
    padded = volume.padded
    maps = [voxel_map(plane) for plane in planes]
    matrices, offsets = np.stack([m for m, _ in maps]), np.stack([o for _, o in maps])
    halves = np.array([plane.half for plane in planes])[:, None]
    flat = np.zeros((len(planes), len(points)), np.int64)
    kept = None
    for axis, size in enumerate(padded.shape):
        at = points[None, :, 0] * matrices[:, 0, axis, None]
        at += points[None, :, 1] * matrices[:, 1, axis, None]
        at += offsets[:, axis, None] + PAD
        if axis == 0 and halves.any():
            kept = (at - PAD - volume.classes.shape[0] / 2) * halves >= 0
        np.maximum(at, 0, out=at)  # then truncation is the floor
        np.minimum(at, size - 1, out=at)
        flat += at.astype(np.int64) * (padded.strides[axis] // padded.itemsize)
    classes = padded.ravel()[flat]
    return classes if kept is None else np.where(kept, classes, 0).astype(classes.dtype)


def _mean_log_ps(volume: ClassVolume, planes: list[Plane], points: np.ndarray, flat_log_p: np.ndarray) -> np.ndarray:
    """(planes,): each plane's mean log probability of its cut's classes at fixed points
    (`flat_log_p`: the (classes, N) log probabilities, raveled)."""
    columns = np.arange(len(points))
    return flat_log_p[cut_many(volume, planes, points).astype(np.int64) * len(points) + columns].mean(axis=1)


def _mean_log_p(volume: ClassVolume, points: np.ndarray, flat_log_p: np.ndarray) -> Callable[[Plane], float]:
    """The fit's objective over fixed points: `_mean_log_ps` of one plane."""

    def mean(plane: Plane) -> float:
        return float(_mean_log_ps(volume, [plane], points, flat_log_p)[0])

    return mean


def _best_starts(
    volume: ClassVolume, starts: list[Plane], points: np.ndarray, flat_log_p: np.ndarray, n: int, batch: int = 512
) -> list[Plane]:
    """The `n` starts of highest mean log probability (`_mean_log_ps`) at `points`, in that order
    (ties in the starts' order), scored `batch` planes at a time."""
    scores = np.concatenate(
        [_mean_log_ps(volume, starts[i : i + batch], points, flat_log_p) for i in range(0, len(starts), batch)]
    )
    return [starts[i] for i in np.argsort(-scores, kind="stable")[:n]]


def section_points(ys: np.ndarray, xs: np.ndarray, centre: np.ndarray, px_mm: float) -> np.ndarray:
    """Pixels (ys, xs) as (N, 2) points in mm from the section's `centre` (row, column), x to the right."""
    return np.stack([(xs - centre[1]) * px_mm, (ys - centre[0]) * px_mm], axis=1)


def whole_section(probabilities: np.ndarray) -> np.ndarray | None:
    """The tile's section (bool (H, W)): its largest piece of tissue, None when that touches the edge."""
    pieces, n = ndi.label(probabilities[0] < 0.5)
    if n == 0:
        return None
    largest = 1 + int(np.argmax(np.bincount(pieces.ravel())[1:]))
    section = pieces == largest
    if section[0].any() or section[-1].any() or section[:, 0].any() or section[:, -1].any():
        return None
    return section


def fit_plane(volume: ClassVolume, log_p: np.ndarray, points: np.ndarray, area_mm2: float) -> Plane:
    """The plane whose cut best explains `log_p` ((classes, N): each point's log class probabilities,
    in the volume's classes) at `points` ((N, 2) mm from the section's centre).

    Notes
    -----
    Every coronal start, of the whole plane or of either half (a hemisection), is scored on
    COARSE_PX points, and the best STARTS of the whole planes and the best STARTS of the halves are
    refined by Powell's method on FINE_PX points (a hemisection turned in its tile can lose the
    coarse ranking to a small whole brain, yet win once refined). Refining more starts and
    polishing on every point finds planes that explain the probabilities better, yet on average no
    closer to the true regions, at three times the cost (benchmarks/README.md, the atlas prior)."""
    rng = np.random.default_rng(0)

    def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
        some = rng.choice(len(points), min(n, len(points)), replace=False)
        return points[some], np.ascontiguousarray(log_p[:, some]).ravel()

    coarse = sample(COARSE_PX)
    candidates = coronal_starts(volume, area_mm2)
    starts = [
        start
        for whole in (True, False)
        for start in _best_starts(volume, [c for c in candidates if (c.half == 0) == whole], *coarse, STARTS)
    ]
    fine = _mean_log_p(volume, *sample(FINE_PX))
    refined = [(_powell(fine, start, MAX_STEPS), start.half) for start in starts]
    best, half = min(refined, key=lambda r: r[0].fun)
    return Plane(*(float(v) for v in best.x), half)


def coronal_starts(volume: ClassVolume, area_mm2: float) -> list[Plane]:
    """Untilted coronal planes through the volume's slices every AP_STEP voxels, whole and either
    half, at every angle in ANGLES, centred on that slice (or half) and scaled so it has the
    section's area."""
    starts = []
    for j, half, lr, dv, voxels in volume.coronal_centres:
        scale = math.sqrt(voxels * VOXEL_MM**2 / area_mm2)
        starts += [Plane(lr, (j + 0.5) * VOXEL_MM, dv, 0.0, 0.0, float(a), scale, scale, half) for a in ANGLES]
    return starts


def _powell(objective: Callable[[Plane], float], start: Plane, steps: int):
    """scipy's result of Powell's method maximising `objective` from `start` over its eight numbers
    (its `fun` negated; its half kept)."""
    return minimize(
        lambda q: -objective(Plane(*q, start.half)),
        np.array(start[:8]),
        method="Powell",
        options={"xtol": 1e-3, "ftol": 1e-4, "maxfev": steps},
    )


@dataclass(frozen=True)
class AtlasPrior:
    """The prior for one model: its weight, the model's µm/px and which model class each volume
    class is (`classes[k]`: the model's index of the volume's class k)."""

    weight: float
    pixel_size_um: float
    classes: tuple[int, ...]

    @classmethod
    def for_model(cls, class_names: list[str], pixel_size_um: float, weight: float) -> AtlasPrior | None:
        """The prior of a model with these classes, or None (weight 0, or classes the volume lacks)."""
        names = read_volume().names
        if weight <= 0 or not set(names) <= set(class_names):
            return None
        return cls(weight, pixel_size_um, tuple(class_names.index(n) for n in names))

    def apply(self, probabilities: np.ndarray) -> np.ndarray:
        """A tile's (classes, H, W) probabilities weighed against the atlas cut at its section's
        plane; as they were where the tile holds no whole section or the fit is not trusted.

        Notes
        -----
        On the section, the result equals softmax(log p + weight * log q) over classes, with q the
        cut's one-hot classes blurred by EDGE_PX and mixed with a uniform FLOOR; off it, p."""
        located = self.locate(probabilities)
        if located is None:
            return probabilities
        return self.fuse(probabilities, read_volume(), *located)

    def locate(self, probabilities: np.ndarray) -> tuple[Plane, np.ndarray, np.ndarray] | None:
        """Steps 1 and 2: the plane of the tile's whole section, the section (bool (H, W)) and its
        centre (row, column); None where the tile holds no whole section."""
        section = whole_section(probabilities)
        if section is None:
            return None
        px_mm = self.pixel_size_um / 1000
        log_p = np.log(np.clip(probabilities[list(self.classes)], LOG_FLOOR, 1.0))
        centre = np.argwhere(section).mean(axis=0)
        ring = max(1, round(RING_MM / px_mm))
        fitted = ndi.binary_dilation(section, iterations=ring) & ~((probabilities[0] < 0.5) & ~section)
        ys, xs = np.nonzero(fitted)
        points = section_points(ys, xs, centre, px_mm)
        return fit_plane(read_volume(), log_p[:, ys, xs], points, section.sum() * px_mm**2), section, centre

    def fuse(
        self, probabilities: np.ndarray, volume: ClassVolume, plane: Plane, section: np.ndarray, centre: np.ndarray
    ) -> np.ndarray:
        """Step 3: the probabilities weighed against the cut at `plane` on `section`."""
        h, w = section.shape
        ys, xs = np.mgrid[0:h, 0:w]
        points = section_points(ys.ravel(), xs.ravel(), centre, self.pixel_size_um / 1000)
        labels = np.asarray(self.classes)[cut(volume, plane, points)].reshape(h, w)
        if np.mean(labels[section] == probabilities[:, section].argmax(0)) < MIN_AGREEMENT:
            return probabilities
        n = len(probabilities)
        q = np.stack([ndi.gaussian_filter((labels == k).astype(np.float32), EDGE_PX) for k in range(n)])
        score = np.log(np.clip(probabilities, LOG_FLOOR, 1.0)) + self.weight * np.log(q * (1 - FLOOR) + FLOOR / n)
        fused = np.exp(score - score.max(axis=0))
        fused /= fused.sum(axis=0)
        return np.where(section, fused, probabilities).astype(probabilities.dtype)
