"""Agreement between predicted and true regions: Dice and IoU per class, COCO mask mAP.

Training's validation and `sebre evaluate` score with these same functions, so a validation Dice
and an evaluate Dice of the same maps are the same number.

mAP is COCO's: region instances are matched greedily in score order to the unmatched true instance
of their class with the highest IoU at or above a threshold, and average precision is the
101-point interpolated area under the precision-recall curve, per class, averaged over classes with
a true instance (and, for mAP@0.5:0.95, over ten IoU thresholds).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


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


IOU_THRESHOLDS = np.round(np.linspace(0.5, 0.95, 10), 2)


RECALL_POINTS = np.linspace(0, 1, 101)


class Instances(NamedTuple):
    """Region instances of one image: an id per pixel (0: none), and each id's class and score."""

    ids: np.ndarray
    classes: dict[int, int]
    scores: dict[int, float]


def overlaps(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IoU of every predicted id with every true id, from one pass over the pixels: (ids, ids, IoU)."""
    p_ids, p_inv = np.unique(pred, return_inverse=True)
    t_ids, t_inv = np.unique(truth, return_inverse=True)
    inter = np.bincount(p_inv.ravel() * len(t_ids) + t_inv.ravel(), minlength=len(p_ids) * len(t_ids))
    inter = inter.reshape(len(p_ids), len(t_ids)).astype(float)
    union = inter.sum(axis=1)[:, None] + inter.sum(axis=0)[None, :] - inter
    iou = inter / np.maximum(union, 1)
    keep_p, keep_t = p_ids != 0, t_ids != 0
    return p_ids[keep_p], t_ids[keep_t], iou[np.ix_(keep_p, keep_t)]


def match(iou: np.ndarray, thresholds: np.ndarray = IOU_THRESHOLDS) -> np.ndarray:
    """(predictions, thresholds): is each prediction (rows in score order) a true positive?"""
    hits = np.zeros((iou.shape[0], len(thresholds)), bool)
    for k, t in enumerate(thresholds):
        free = np.ones(iou.shape[1], bool)
        for i in range(iou.shape[0]):
            candidates = np.where(free & (iou[i] >= t), iou[i], -1.0)
            if candidates.size and candidates.max() >= 0:
                free[candidates.argmax()] = False
                hits[i, k] = True
    return hits


def average_precision(hits: np.ndarray, scores: np.ndarray, n_truth: int) -> np.ndarray:
    """101-point interpolated AP per threshold column; NaN without true instances (COCO skips them)."""
    if n_truth == 0:
        return np.full(hits.shape[1], np.nan)
    if len(hits) == 0:
        return np.zeros(hits.shape[1])
    order = np.argsort(-scores, kind="mergesort")
    tp = np.cumsum(hits[order], axis=0)
    ranks = np.arange(1, len(order) + 1)[:, None]
    ap = np.zeros(hits.shape[1])
    for k in range(hits.shape[1]):
        recall, precision = tp[:, k] / n_truth, tp[:, k] / ranks[:, 0]
        envelope = np.maximum.accumulate(precision[::-1])[::-1]  # best precision at this recall or more
        at = np.searchsorted(recall, RECALL_POINTS, side="left")
        ap[k] = np.where(at < len(recall), envelope[np.minimum(at, len(recall) - 1)], 0.0).mean()
    return ap


def mask_ap(pairs: list[tuple[Instances, Instances]], n_classes: int) -> np.ndarray:
    """AP per class (rows) and IoU threshold (columns) over (predicted, true) instances of images."""
    hits = {c: [np.zeros((0, len(IOU_THRESHOLDS)), bool)] for c in range(1, n_classes)}
    scores = {c: [] for c in range(1, n_classes)}
    n_truth = np.zeros(n_classes, int)
    for pred, truth in pairs:
        p_ids, t_ids, iou = overlaps(pred.ids, truth.ids)
        for c in range(1, n_classes):
            rows = sorted(
                (i for i, v in enumerate(p_ids) if pred.classes.get(int(v)) == c),
                key=lambda i: -pred.scores.get(int(p_ids[i]), 1.0),
            )
            cols = [j for j, v in enumerate(t_ids) if truth.classes.get(int(v)) == c]
            n_truth[c] += len(cols)
            hits[c].append(match(iou[np.ix_(np.asarray(rows, int), np.asarray(cols, int))]))
            scores[c] += [pred.scores.get(int(p_ids[i]), 1.0) for i in rows]
    ap = np.full((n_classes, len(IOU_THRESHOLDS)), np.nan)
    for c in range(1, n_classes):
        ap[c] = average_precision(np.concatenate(hits[c]), np.asarray(scores[c], float), n_truth[c])
    return ap


def mean_ap(ap: np.ndarray) -> dict[str, float]:
    """mAP@0.5 and mAP@0.5:0.95 over the classes that have true instances."""
    scored = ap[~np.isnan(ap[:, 0])]
    if not len(scored):
        return {"mAP@0.5": float("nan"), "mAP@0.5:0.95": float("nan")}
    return {"mAP@0.5": float(scored[:, 0].mean()), "mAP@0.5:0.95": float(scored.mean())}
