"""Agreement between a predicted and a true class map: Dice and IoU per region."""

from __future__ import annotations

import numpy as np

from .labels import class_lut, open_labels, read_plane
from .slide import Slide


def confusion(pred: np.ndarray, truth: np.ndarray, n_classes: int) -> np.ndarray:
    """n x n pixel counts, rows = truth class, columns = predicted class."""
    idx = truth.astype(np.int64).ravel() * n_classes + pred.astype(np.int64).ravel()
    return np.bincount(idx, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def dice_iou(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class Dice and IoU from a confusion matrix; NaN for classes in neither map."""
    tp = np.diag(matrix).astype(float)
    fp = matrix.sum(axis=0) - tp
    fn = matrix.sum(axis=1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return 2 * tp / (2 * tp + fp + fn), tp / (tp + fp + fn)


def class_plane(slide: Slide, name: str, level: int, z: int = 0) -> np.ndarray:
    info = open_labels(slide, name)
    values = read_plane(info, slide, level, z)
    return class_lut(info, int(values.max(initial=0)))[values]


def compare_layers(slide: Slide, pred: str, truth: str, class_names: list[str], level: int) -> dict[str, float]:
    """Dice per foreground class present in either layer, pooled over planes, plus their mean."""
    n = len(class_names)
    matrix = sum(confusion(np.minimum(class_plane(slide, pred, level, z), n - 1), np.minimum(class_plane(slide, truth, level, z), n - 1), n)
                 for z in range(slide.n_planes))
    dice, _ = dice_iou(matrix)
    scores = {class_names[c]: round(float(dice[c]), 4) for c in range(1, n) if not np.isnan(dice[c])}
    scores["mean"] = round(float(np.mean(list(scores.values()))), 4) if scores else float("nan")
    return scores
