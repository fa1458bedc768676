"""From a model's outputs to a tile's class map: instances (best score x mask wins a pixel) or a
semantic branch's probabilities; and the per-pixel loss's class weights."""

import sys

import numpy as np
import pytest
import torch

from sebre_ij.infer import EVIDENCE_THRESHOLD, GIL_SWITCH_S, class_evidence, class_map, instance_map, predict_tiles
from sebre_ij.model import ModelCard
from sebre_ij.synth import CLASSES, random_model
from sebre_ij.tiles import tile_grid
from sebre_ij.train import Example, semantic_weights


def test_instances_best_score_times_mask_wins_each_pixel():
    masks = torch.zeros((3, 1, 4, 4))
    masks[0, 0, :, :2] = 1.0  # class 1, score 0.9, left half
    masks[1, 0, :, 1:] = 0.8  # class 2, score 0.9: 0.72 beats class 1 only where class 1 is absent
    masks[2, 0, 3, 3] = 1.0  # class 1 again, but below min_score: ignored
    boxes = torch.tensor([[0.0, 0.0, 1.0, 3.0], [1.0, 0.0, 3.0, 3.0], [3.0, 3.0, 3.0, 3.0]])  # x0, y0, x1, y1
    out = {"masks": masks, "scores": torch.tensor([0.9, 0.9, 0.2]), "labels": torch.tensor([1, 2, 1]), "boxes": boxes}
    evidence = class_evidence(out, 3, min_score=0.3)
    torch.testing.assert_close(evidence[1, 0], torch.tensor([0.9, 0.9, 0.0, 0.0]))
    torch.testing.assert_close(evidence[2, 0], torch.tensor([0.0, 0.72, 0.72, 0.72]))
    classes, scores = class_map(evidence)
    np.testing.assert_array_equal(classes, [[1, 1, 2, 2]] * 4)
    assert classes[3, 3] == 2 and np.isclose(scores[0, 0], 0.9)


def test_evidence_over_each_instances_box_equals_evidence_over_the_whole_tile():
    """class_evidence visits only each instance's box (grown): a real Mask R-CNN's pasted masks
    are zero outside it, so the result is that of a maximum over the whole tile."""
    names = [n for n, _ in CLASSES]
    card = ModelCard("tiny_fpn", names, [c for _, c in CLASSES], 8.0, list("RGB"), [0.8] * 3, [0.2] * 3, 128, 32)
    model = random_model(card).eval()  # random weights that find regions, of all sizes
    torch.manual_seed(0)
    with torch.inference_mode():
        outputs = model([torch.rand(3, 128, 128) for _ in range(3)])
    assert sum(len(o["scores"]) for o in outputs) > 20
    for out in outputs:
        whole = torch.zeros((len(names), 128, 128))
        for mask, score, cls in zip(out["masks"][:, 0], out["scores"], out["labels"]):
            if score >= 0.1:
                whole[cls] = torch.maximum(whole[cls], mask * score)
        torch.testing.assert_close(class_evidence(out, len(names), min_score=0.1), whole, rtol=0, atol=0)
        for got, want in zip(instance_map(out, min_score=0.1), class_map(whole)):  # the CPU's way, straight from the instances
            np.testing.assert_array_equal(got, want)


def test_instance_map_breaks_ties_as_class_map_does():
    """Two classes with the same score x mask on a pixel: the lower class wins, whichever instance comes first."""
    masks = torch.zeros((3, 1, 4, 4))
    masks[:2, 0, 1:3, 1:3] = 0.5
    masks[2, 0, 0, 0] = 1.0
    out = {"masks": masks, "scores": torch.tensor([0.8, 0.8, 0.9]), "labels": torch.tensor([5, 2, 7]),
           "boxes": torch.tensor([[1.0, 1.0, 2.0, 2.0], [1.0, 1.0, 2.0, 2.0], [0.0, 0.0, 2.0, 2.0]])}
    classes, scores = instance_map(out, min_score=0.3)
    want = class_map(class_evidence(out, 8, min_score=0.3))
    np.testing.assert_array_equal(classes, want[0])
    np.testing.assert_array_equal(scores, want[1])
    assert classes[1, 1] == 2 and classes[0, 0] == 7


def test_a_semantic_branch_gives_the_class_map_by_its_largest_probability():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.2, 0.5, 0.1], [0.1, 0.3, 0.8]])[:, None, :]  # (classes, 1, 3)
    out = {"masks": torch.zeros((0, 1, 1, 3)), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64),
           "boxes": torch.zeros((0, 4)), "semantic": probs}
    classes, scores = class_map(class_evidence(out, 3, min_score=0.3))
    np.testing.assert_array_equal(classes, [[0, 1, 2]])  # background wins the first pixel
    np.testing.assert_allclose(scores, [[0.0, 0.5, 0.8]])
    assert EVIDENCE_THRESHOLD < 0.5


def test_semantic_weights_are_inverse_square_roots_of_pixel_shares():
    classes = np.zeros((10, 10), np.uint8)
    classes[:, :1] = 1  # 10 % class 1, 90 % background, class 2 absent
    weights = semantic_weights([Example(np.zeros((1, 10, 10), np.float32), classes, "s")], 3)
    raw = np.array([1 / np.sqrt(0.9), 1 / np.sqrt(0.1)])
    np.testing.assert_allclose(weights[:2].numpy(), raw / raw.mean(), rtol=1e-6)
    assert weights[2] == 0


def test_predict_tiles_hands_the_gil_back_quickly_while_it_runs():
    """The helper threads beside the model run at a short switch interval (infer.GIL_SWITCH_S),
    and the caller's interval comes back when the tiles are done, or when it stops early."""
    names = [n for n, _ in CLASSES]
    card = ModelCard("tiny_fpn", names, [c for _, c in CLASSES], 8.0, list("RGB"), [0.8] * 3, [0.2] * 3, 64, 16)
    model = random_model(card).eval()
    tiles = tile_grid((160, 160), 64, 16)
    seen = []

    def read(tile):
        seen.append(sys.getswitchinterval())
        return np.full((3, 64, 64), 0.5, np.float32)

    before = sys.getswitchinterval()
    run = predict_tiles(model, card, tiles, read, device=torch.device("cpu"), batch_size=2)
    results = list(run)
    assert [r[0] for r in results] == tiles and seen == pytest.approx([GIL_SWITCH_S] * len(tiles)) and before > 10 * GIL_SWITCH_S
    assert sys.getswitchinterval() == before
    stopped = predict_tiles(model, card, tiles, read, device=torch.device("cpu"), batch_size=2)
    next(stopped)
    assert sys.getswitchinterval() == pytest.approx(GIL_SWITCH_S)
    stopped.close()
    assert sys.getswitchinterval() == before
