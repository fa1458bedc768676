"""From a model's outputs to a tile's class map: instances (best score x mask wins a pixel) or a
semantic branch's probabilities; and the per-pixel loss's class weights."""

import sys

import numpy as np
import pytest
import torch
from torchvision.models.detection.roi_heads import paste_masks_in_image

from sebre_ij.infer import EVIDENCE_THRESHOLD, GIL_SWITCH_S, class_evidence, class_map, instance_map, heap_kept, masks_in_boxes, predict_tiles
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
    are zero outside it, so the result is that of a maximum over the whole tile. instance_map,
    from the same model's masks left in their boxes, gives the same class map, exactly."""
    names = [n for n, _ in CLASSES]
    card = ModelCard("tiny_fpn", names, [c for _, c in CLASSES], 8.0, list("RGB"), [0.8] * 3, [0.2] * 3, 128, 32)
    model = random_model(card).eval()  # random weights that find regions, of all sizes
    torch.manual_seed(0)
    images = [torch.rand(3, 128, 128) for _ in range(3)]
    with torch.inference_mode():
        outputs = model(images)
        with masks_in_boxes(model) as changed:
            boxed = model(images)
        assert changed and "postprocess" not in vars(model.transform)
        assert all("masks" in o for o in model(images[:1]))  # pasted again after
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
        for got, want in zip(instance_map(box, 0.1, (128, 128)), class_map(whole)):  # the CPU's way, straight from the instances
            np.testing.assert_array_equal(got, want)


def test_instance_map_breaks_ties_as_class_map_does():
    """Two classes with the same score x mask on a pixel: the lower class wins, whichever instance comes first."""
    masks = torch.zeros((3, 1, 28, 28))
    masks[:2] = 0.5
    masks[2] = 1.0
    out = {"box_masks": masks, "scores": torch.tensor([0.8, 0.8, 0.9]), "labels": torch.tensor([5, 2, 7]),
           "boxes": torch.tensor([[4.0, 4.0, 9.0, 9.0], [4.0, 4.0, 9.0, 9.0], [0.0, 0.0, 3.0, 3.0]])}
    classes, scores = instance_map(out, 0.3, (12, 12))
    pasted = {**out, "masks": paste_masks_in_image(masks, out["boxes"], (12, 12))}
    want = class_map(class_evidence(pasted, 8, min_score=0.3))
    np.testing.assert_array_equal(classes, want[0])
    np.testing.assert_array_equal(scores, want[1])
    assert classes[6, 6] == 2 and classes[1, 1] == 7


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


def test_predict_tiles_gives_the_class_maps_of_the_models_usual_outputs():
    """On the CPU the masks stay in their boxes (masks_in_boxes) and glibc keeps big blocks in the
    heap (heap_kept): neither changes a pixel of what the usual, pasted outputs give."""
    names = [n for n, _ in CLASSES]
    card = ModelCard("tiny_fpn", names, [c for _, c in CLASSES], 8.0, list("RGB"), [0.8] * 3, [0.2] * 3, 96, 16)
    model = random_model(card).eval()
    tiles = tile_grid((200, 200), 96, 16)
    rng = np.random.default_rng(3)
    images = [rng.random((3, 96, 96), dtype=np.float32) for _ in tiles]
    got = list(predict_tiles(model, card, tiles, lambda t: images[tiles.index(t)], device=torch.device("cpu"), batch_size=3,
                             min_score=0.2))
    assert "postprocess" not in vars(model.transform)
    with torch.inference_mode():
        outputs = [o for i in range(0, len(images), 3) for o in model([torch.from_numpy(im) for im in images[i:i + 3]])]
    assert sum(len(o["scores"]) for o in outputs) > 20
    for (tile, classes, scores), t, out in zip(got, tiles, outputs):
        want = class_map(class_evidence(out, len(names), min_score=0.2))
        assert tile == t and classes.any()
        np.testing.assert_array_equal(classes, want[0])
        np.testing.assert_array_equal(scores, want[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator: Linux only")
def test_heap_kept_serves_big_blocks_from_the_heap_then_gives_memory_back():
    """40 MB (a batch's mask head output) is mmapped by glibc, and unmapped on free, except inside
    heap_kept, where it stays resident for the next call; after it, the memory goes back."""
    import ctypes
    import os

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = MallInfo2

    def mapped_while_held() -> int:
        before = libc.mallinfo2().hblkhd
        block = np.ones(40 << 20, np.uint8)
        mapped = libc.mallinfo2().hblkhd - before
        del block
        return mapped

    def resident() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    assert mapped_while_held() >= 40 << 20
    with heap_kept():
        assert mapped_while_held() == 0
        kept = resident()
    assert kept - resident() >= 30 << 20  # the freed block, given back
    assert mapped_while_held() >= 40 << 20
