"""infer.py: tiles through the model in batches, and from a model's outputs to a tile's class map
(instances: the best score x mask wins a pixel; or a semantic branch's probabilities)."""

import sys
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.models.detection.roi_heads import paste_masks_in_image

from sebre_ij.atlas_prior import AtlasPrior
from sebre_ij.infer import (
    EVIDENCE_THRESHOLD,
    best_classes,
    class_evidence,
    instance_map,
    predict_image,
    predict_tiles,
)
from sebre_ij.model import ModelCard, detect, random_model
from sebre_ij.synth import CLASSES
from sebre_ij.tiles import tile_grid
from sebre_ij.tissue import find_sections


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
    classes, scores = best_classes(evidence)
    np.testing.assert_array_equal(classes, [[1, 1, 2, 2]] * 4)
    assert classes[3, 3] == 2 and np.isclose(scores[0, 0], 0.9)


def test_evidence_over_each_instances_box_equals_evidence_over_the_whole_tile():
    """class_evidence visits only each instance's box (grown): a real Mask R-CNN's pasted masks
    are zero outside it, so the result is that of a maximum over the whole tile. instance_map,
    from the same model's masks left in their boxes, gives the same class map, exactly."""
    names = [n for n, _ in CLASSES]
    card = ModelCard("tiny_fpn", names, [c for _, c in CLASSES], 8.0, list("RGB"), [0.8] * 3, [0.2] * 3, 128, 32)
    model = random_model(card).eval()  # random weights that find regions, of all sizes
    torch.manual_seed(0)
    images = [torch.rand(3, 128, 128) for _ in range(3)]
    with torch.inference_mode():
        outputs = model(images)
        boxed = detect(model, images, paste_masks=False)
    assert sum(len(o["scores"]) for o in outputs) > 20
    for out, box in zip(outputs, boxed):
        assert "masks" not in box and box["box_masks"].shape[1:] == (1, 28, 28)
        for key in ("boxes", "scores", "labels"):
            torch.testing.assert_close(box[key], out[key], rtol=0, atol=0)
        whole = torch.zeros((len(names), 128, 128))
        for mask, score, cls in zip(out["masks"][:, 0], out["scores"], out["labels"]):
            if score >= 0.1:
                whole[cls] = torch.maximum(whole[cls], mask * score)
        torch.testing.assert_close(class_evidence(out, len(names), min_score=0.1), whole, rtol=0, atol=0)
        for got, want in zip(
            instance_map(box, 0.1, (128, 128)), best_classes(whole)
        ):  # the CPU's way, straight from the instances
            np.testing.assert_array_equal(got, want)


def test_instance_map_breaks_ties_as_class_map_does():
    """Two classes with the same score x mask on a pixel: the lower class wins, whichever instance comes first."""
    masks = torch.zeros((3, 1, 28, 28))
    masks[:2] = 0.5
    masks[2] = 1.0
    out = {
        "box_masks": masks,
        "scores": torch.tensor([0.8, 0.8, 0.9]),
        "labels": torch.tensor([5, 2, 7]),
        "boxes": torch.tensor([[4.0, 4.0, 9.0, 9.0], [4.0, 4.0, 9.0, 9.0], [0.0, 0.0, 3.0, 3.0]]),
    }
    classes, scores = instance_map(out, 0.3, (12, 12))
    pasted = {**out, "masks": paste_masks_in_image(masks, out["boxes"], (12, 12))}
    want = best_classes(class_evidence(pasted, 8, min_score=0.3))
    np.testing.assert_array_equal(classes, want[0])
    np.testing.assert_array_equal(scores, want[1])
    assert classes[6, 6] == 2 and classes[1, 1] == 7


def test_a_semantic_branch_gives_the_class_map_by_its_largest_probability():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.2, 0.5, 0.1], [0.1, 0.3, 0.8]])[:, None, :]  # (classes, 1, 3)
    out = {
        "masks": torch.zeros((0, 1, 1, 3)),
        "scores": torch.zeros(0),
        "labels": torch.zeros(0, dtype=torch.int64),
        "boxes": torch.zeros((0, 4)),
        "semantic": probs,
    }
    classes, scores = best_classes(class_evidence(out, 3, min_score=0.3))
    np.testing.assert_array_equal(classes, [[0, 1, 2]])  # background wins the first pixel
    np.testing.assert_allclose(scores, [[0.0, 0.5, 0.8]])
    assert EVIDENCE_THRESHOLD < 0.5


def test_predict_tiles_leaves_the_process_as_it_found_it():
    """No process-wide setting changes while tiles run (other calls may share the process), and
    the model is the same object, unpatched, before and after."""
    names = [n for n, _ in CLASSES]
    card = ModelCard("tiny_fpn", names, [c for _, c in CLASSES], 8.0, list("RGB"), [0.8] * 3, [0.2] * 3, 64, 16)
    model = random_model(card).eval()
    tiles = tile_grid((160, 160), 64, 16)
    before = sys.getswitchinterval(), dict(vars(model.transform)), torch.get_num_threads()
    seen = []

    def read(tile):
        seen.append(sys.getswitchinterval())
        return np.full((3, 64, 64), 0.5, np.float32)

    results = list(predict_tiles(model, card, tiles, read, device=torch.device("cpu"), batch_size=2))
    assert [r[0] for r in results] == tiles and set(seen) == {before[0]}
    assert (sys.getswitchinterval(), dict(vars(model.transform)), torch.get_num_threads()) == before


def test_predict_tiles_gives_the_class_maps_of_the_models_usual_outputs():
    """On the CPU the masks stay in their boxes (detect without pasting): not a pixel changes from
    what the usual, pasted outputs give."""
    names = [n for n, _ in CLASSES]
    card = ModelCard("tiny_fpn", names, [c for _, c in CLASSES], 8.0, list("RGB"), [0.8] * 3, [0.2] * 3, 96, 16)
    model = random_model(card).eval()
    tiles = tile_grid((200, 200), 96, 16)
    rng = np.random.default_rng(3)
    images = [rng.random((3, 96, 96), dtype=np.float32) for _ in tiles]
    got = list(
        predict_tiles(
            model,
            card,
            tiles,
            lambda t: images[tiles.index(t)],
            device=torch.device("cpu"),
            batch_size=3,
            min_score=0.2,
        )
    )
    with torch.inference_mode():
        outputs = [
            o for i in range(0, len(images), 3) for o in model([torch.from_numpy(im) for im in images[i : i + 3]])
        ]
    assert sum(len(o["scores"]) for o in outputs) > 20
    for (tile, classes, scores), t, out in zip(got, tiles, outputs):
        want = best_classes(class_evidence(out, len(names), min_score=0.2))
        assert tile == t and classes.any()
        np.testing.assert_array_equal(classes, want[0])
        np.testing.assert_array_equal(scores, want[1])


def test_the_semantic_branch_alone_gives_the_class_maps_the_whole_network_gives():
    """Region mode with a semantic branch runs the backbone, the FPN and that branch only: the same
    class maps and scores, without the RPN and RoI heads (they are not even called)."""
    names = [n for n, _ in CLASSES]
    card = ModelCard(
        "tiny_fpn", names, [c for _, c in CLASSES], 8.0, list("RGB"), [0.8] * 3, [0.2] * 3, 96, 16, semantic=True
    )
    model = random_model(card).eval()
    tiles = tile_grid((200, 200), 96, 16)
    rng = np.random.default_rng(5)
    images = [rng.random((3, 96, 96), dtype=np.float32) for _ in tiles]

    def run(**kwargs):
        read = lambda t: images[tiles.index(t)]  # noqa: E731
        return list(predict_tiles(model, card, tiles, read, device=torch.device("cpu"), batch_size=2, **kwargs))

    whole = run()
    calls = []
    model.rpn.register_forward_hook(lambda *a: calls.append("rpn"))
    alone = run(instances=False)
    assert not calls and len(alone) == len(whole) == len(tiles)
    for (t1, c1, s1, m1), (t2, c2, s2, m2) in zip(whole, alone):
        assert t1 == t2 and c1.any()
        np.testing.assert_array_equal(c1, c2)
        np.testing.assert_array_equal(s1, s2)
        np.testing.assert_array_equal(m1, m2)  # the class margins too (finer.py)
        assert ((m1 >= 0) & (m1 <= 1)).all() and m1.std() > 0
    with torch.inference_mode():
        (out,) = detect(model, [torch.from_numpy(images[0])], instances=False)
    assert set(out) == {"semantic"}


@dataclass(frozen=True)
class ClassTwoPrior(AtlasPrior):
    """A stand-in prior: every pixel of a tile becomes class 2, whatever the model said."""

    def apply(self, probabilities: np.ndarray) -> np.ndarray:
        out = np.zeros_like(probabilities)
        out[2] = 1
        return out


def test_predict_image_weighs_the_maps_against_the_prior_it_is_given():
    """A prior passed as `atlas_prior` replaces the card's (benchmarks move the fitted planes so)."""
    names = [n for n, _ in CLASSES]
    card = ModelCard(
        "tiny_fpn", names, [c for _, c in CLASSES], 8.0, list("RGB"), [0.8] * 3, [0.2] * 3, 96, 16, semantic=True
    )
    image = np.full((3, 120, 150), 0.9, np.float32)
    image[:, 20:100, 30:120] = 0.3
    sections = find_sections(image) > 0
    kwargs = {"device": torch.device("cpu")}
    alone = predict_image(random_model(card).eval(), card, image, atlas_prior=False, **kwargs)
    given = predict_image(random_model(card).eval(), card, image, atlas_prior=ClassTwoPrior(1.0, 8.0, ()), **kwargs)
    assert (given[sections] == 2).all() and not given[~sections].any()
    assert (alone[sections] != 2).any()
