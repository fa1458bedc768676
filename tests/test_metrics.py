"""metrics.py: Dice, IoU, matching and COCO average precision against values worked out by hand."""

import numpy as np
import pytest

from sebre_ij.metrics import Instances, average_precision, confusion, dice_iou, mask_ap, match, mean_ap, overlaps


def test_dice_and_iou_by_hand():
    truth = np.array([[1, 1, 1, 1], [1, 1, 2, 2], [0, 0, 2, 2]])
    pred = np.array([[1, 1, 1, 0], [1, 2, 2, 2], [0, 0, 2, 0]])
    m = confusion(pred, truth, 3)
    # rows truth, columns prediction. Class 1: 6 true pixels, 4 kept, (0,3) -> 0, (1,1) -> 2.
    # Class 2: 4 true pixels, 3 kept, (2,3) -> 0. Background: 2 pixels, both kept.
    np.testing.assert_array_equal(m, [[2, 0, 0], [1, 4, 1], [1, 0, 3]])
    dice, iou = dice_iou(m)
    # class 1: tp 4, fp 0, fn 2 -> Dice 8/10, IoU 4/6; class 2: tp 3, fp 1, fn 1 -> Dice 6/8, IoU 3/5
    assert dice[1] == pytest.approx(0.8) and iou[1] == pytest.approx(4 / 6)
    assert dice[2] == pytest.approx(0.75) and iou[2] == pytest.approx(0.6)


def test_overlaps_by_hand():
    pred = np.array([[5, 5, 0], [5, 7, 7]])
    truth = np.array([[1, 1, 1], [0, 2, 2]])
    p_ids, t_ids, iou = overlaps(pred, truth)
    assert p_ids.tolist() == [5, 7] and t_ids.tolist() == [1, 2]
    # 5 vs 1: 2 shared of 3 + 3 - 2 = 4 -> 0.5; 5 vs 2: 0; 7 vs 1: 0; 7 vs 2: 2 of 2 -> 1
    np.testing.assert_allclose(iou, [[0.5, 0], [0, 1]])


def test_greedy_matching_takes_the_best_free_truth():
    # two predictions (score order) over two truths: the first takes truth 1 (IoU 0.8), leaving
    # truth 0 (IoU 0.6) to the second at 0.5, nothing at 0.7 for the second
    iou = np.array([[0.6, 0.8], [0.6, 0.9]])
    hits = match(iou, np.array([0.5, 0.7, 0.85]))
    np.testing.assert_array_equal(hits, [[True, True, False], [True, False, True]])


def test_average_precision_101_points_by_hand():
    # 2 true instances; predictions by score: hit, miss, hit. Precision 1, 1/2, 2/3 at recall
    # 1/2, 1/2, 1; envelope 1, 2/3, 2/3. The 51 recall points 0..0.50 read 1, the 50 above read 2/3.
    hits = np.array([[True], [False], [True]])
    ap = average_precision(hits, np.array([0.9, 0.8, 0.7]), 2)
    assert ap[0] == pytest.approx((51 + 50 * 2 / 3) / 101)  # 0.83498
    # one of two truths found: 51 of 101 points at precision 1
    assert average_precision(np.array([[True]]), np.array([1.0]), 2)[0] == pytest.approx(51 / 101)
    assert np.isnan(average_precision(np.zeros((1, 1), bool), np.array([1.0]), 0)[0])  # no truth: not scored
    assert average_precision(np.zeros((0, 1), bool), np.zeros(0), 3)[0] == 0  # truth, never predicted


def test_mask_map_over_images_and_thresholds_by_hand():
    # image A: truth cortex (id 1) is 10 pixels; the prediction (id 11, cortex, score 0.9) covers 8
    # of them plus 0 more: IoU 0.8. Truth thalamus (id 2), 4 pixels, predicted as id 12 exactly: IoU 1.
    truth_a = np.zeros((4, 5), int)
    truth_a[:2, :] = 1
    truth_a[2:, :2] = 2
    pred_a = np.zeros((4, 5), int)
    pred_a[:2, :4] = 11
    pred_a[2:, :2] = 12
    # image B: truth cortex only; the prediction is thalamus (a wrong class) with score 0.5
    truth_b = np.ones((2, 2), int)
    pred_b = np.full((2, 2), 12)
    pairs = [
        (Instances(pred_a, {11: 1, 12: 2}, {11: 0.9}), Instances(truth_a, {1: 1, 2: 2}, {})),
        (Instances(pred_b, {12: 2}, {12: 0.5}), Instances(truth_b, {1: 1}, {})),
    ]
    ap = mask_ap(pairs, 3)
    # cortex: 2 truths, 1 prediction hit up to IoU 0.8 -> 51/101 at 0.5..0.8 (7 thresholds), 0 at 0.85..0.95
    np.testing.assert_allclose(ap[1], [51 / 101] * 7 + [0] * 3)
    # thalamus: 1 truth; hit (score 1, default) then a miss (0.5): precision 1 up to recall 1 -> AP 1
    np.testing.assert_allclose(ap[2], [1.0] * 10)
    assert np.isnan(ap[0]).all()
    scores = mean_ap(ap)
    assert scores["mAP@0.5"] == pytest.approx((51 / 101 + 1) / 2)
    assert scores["mAP@0.5:0.95"] == pytest.approx((51 / 101 * 0.7 + 1) / 2)
