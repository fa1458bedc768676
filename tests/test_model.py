"""Model variants and the checkpoint contract: weights + card in one file, loaded without code."""

import json
import os
import pickle
import subprocess

import pytest
import torch
import torchvision
from conftest import SEBRE, write_synth_set
from safetensors.torch import save_file

from sebre_ij.checkpoint import load_checkpoint, load_init, read_card, save_checkpoint
from sebre_ij.errors import UserError
from sebre_ij.model import ARCHITECTURES, ModelCard, build_model


def card(arch="tiny_fpn", channels=("R", "G", "B"), tile=128):
    n = len(channels)
    return ModelCard(
        arch,
        ["background", "cortex", "thalamus"],
        [(0, 0, 0), (230, 90, 60), (0, 120, 60)],
        16.0,
        list(channels),
        [0.5] * n,
        [0.2] * n,
        tile_size=tile,
        overlap=32,
    )


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_architecture_runs_a_tile_at_native_size(arch):
    model = build_model(card(arch)).eval()
    with torch.no_grad():
        out = model([torch.rand(3, 128, 128)])[0]
    assert set(out) >= {"boxes", "labels", "scores", "masks"}
    assert out["masks"].shape[-2:] == (128, 128)
    assert model.transform.min_size == (128,) and model.transform.max_size == 128


def test_single_channel_model():
    model = build_model(card("mobilenet_v3_fpn", channels=("DAPI",))).eval()
    with torch.no_grad():
        assert model([torch.rand(1, 128, 128)])[0]["masks"].shape[-2:] == (128, 128)


def test_checkpoint_roundtrip_keeps_card_and_weights(tmp_path):
    c = card()
    model = build_model(c)
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, model, c)
    assert read_card(path) == c
    loaded, c2 = load_checkpoint(path)
    assert c2 == c
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k


def test_pickle_checkpoint_is_refused_without_running_it(tmp_path):
    class Boom:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"state": Boom()}))
    with pytest.raises(UserError, match="a PyTorch pickle checkpoint"):
        load_checkpoint(path)
    assert not (tmp_path / "pwned").exists()


def test_foreign_safetensors_and_wrong_version_are_refused(tmp_path):
    path = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(UserError, match="without a sebre-ij model card"):
        read_card(path)
    future = card()
    future.format = "sebre-ij-checkpoint/99"
    save_file({"w": torch.zeros(2)}, str(path), metadata={"sebre_card": future.to_json()})
    with pytest.raises(UserError, match="sebre-ij-checkpoint/1"):
        read_card(path)


def test_safetensors_header_length_starting_with_0x80_is_not_taken_for_a_pickle(tmp_path):
    """A safetensors file begins with its header's length: its first byte may be 0x80, a pickle's
    first byte, and must still load."""
    from sebre_ij.checkpoint import refuse_pickle
    from sebre_ij.errors import UserError

    header = b"{" + b" " * (0x80 + 255)  # 384 bytes: the length's low byte is 0x80
    path = tmp_path / "m.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header)
    assert path.read_bytes()[0] == 0x80
    refuse_pickle(path)
    pickle_path = tmp_path / "m.pt"
    pickle_path.write_bytes(b"\x80\x04\x95" + b"\x00" * 40)
    with pytest.raises(UserError, match="pickle"):
        refuse_pickle(pickle_path)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_semantic_branch_gives_class_probabilities_and_a_training_loss(arch):
    c = card(arch)
    c.semantic = True
    model = build_model(c)
    truth = torch.zeros((128, 128), dtype=torch.int64)
    truth[20:90, 30:100] = 1
    target = {
        "boxes": torch.tensor([[30.0, 20.0, 100.0, 90.0]]),
        "labels": torch.tensor([1]),
        "masks": (truth == 1).to(torch.uint8)[None],
        "semantic": truth,
    }
    losses = model.train()([torch.rand(3, 128, 128)], [target])
    assert losses["loss_semantic"].item() > 0
    losses["loss_semantic"].backward()
    assert model.semantic.classify.weight.grad.abs().sum() > 0
    with torch.no_grad():
        out = model.eval()([torch.rand(3, 128, 128)])[0]
    assert out["semantic"].shape == (3, 128, 128)
    torch.testing.assert_close(out["semantic"].sum(0), torch.ones(128, 128))


def test_semantic_checkpoint_roundtrip_and_older_cards_without_the_field(tmp_path):
    c = card()
    c.semantic = True
    model = build_model(c).eval()
    save_checkpoint(tmp_path / "s.safetensors", model, c)
    loaded, got = load_checkpoint(tmp_path / "s.safetensors")
    assert got.semantic is True
    image = torch.rand(3, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(loaded([image])[0]["semantic"], model([image])[0]["semantic"])
    plain = card()
    old = {k: v for k, v in plain.__dict__.items() if k != "semantic"}  # a card written before the field existed
    save_file(
        {k: v.contiguous() for k, v in build_model(plain).state_dict().items()},
        str(tmp_path / "old.safetensors"),
        metadata={"sebre_card": json.dumps(old)},
    )
    model_old, card_old = load_checkpoint(tmp_path / "old.safetensors")
    assert card_old.semantic is False and not hasattr(model_old, "semantic")


def mobilenet_card():
    return ModelCard(
        "mobilenet_v3_fpn",
        ["background", "cortex", "thalamus"],
        [(0, 0, 0)] * 3,
        16.0,
        ["R", "G", "B"],
        [0.5] * 3,
        [0.2] * 3,
        tile_size=128,
        overlap=32,
    )


def test_init_from_a_torchvision_imagenet_file(tmp_path):
    torch.manual_seed(1)
    classifier = torchvision.models.mobilenet_v3_large(weights=None)
    path = tmp_path / "mobilenet_v3_large.pth"
    torch.save(classifier.state_dict(), path)
    model = build_model(mobilenet_card())
    report = load_init(model, path)
    taken, total = report.taken, report.total
    body = [k for k in model.state_dict() if k.startswith("backbone.body.")]
    assert taken == len(body) and total == len(model.state_dict())
    ours = model.state_dict()["backbone.body.0.0.weight"]
    assert torch.equal(ours, classifier.state_dict()["features.0.0.weight"])


def test_init_from_a_torchvision_detector_takes_all_but_the_class_layers(tmp_path):
    torch.manual_seed(2)
    detector = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_fpn(
        weights=None, weights_backbone=None, num_classes=91
    )
    path = tmp_path / "fasterrcnn_coco.pth"
    torch.save({"model": detector.state_dict()}, path)  # wrapped, as torchvision's reference scripts save
    model = build_model(mobilenet_card())
    taken = load_init(model, path).taken
    theirs = detector.state_dict()
    assert torch.equal(model.state_dict()["roi_heads.box_head.fc6.weight"], theirs["roi_heads.box_head.fc6.weight"])
    assert not torch.equal(
        model.state_dict()["roi_heads.box_predictor.cls_score.bias"][:3],
        theirs["roi_heads.box_predictor.cls_score.bias"][:3],
    )
    fits = [k for k, v in model.state_dict().items() if k in theirs and theirs[k].shape == v.shape]
    assert taken == len(fits) > 200


def test_init_refuses_files_that_are_not_weights(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(UserError, match="not a plain weights file"):
        load_init(build_model(mobilenet_card()), evil)
    assert not marker.exists()
    unrelated = tmp_path / "unrelated.pth"
    torch.save({"conv.weight": torch.zeros(2, 2)}, unrelated)
    with pytest.raises(UserError, match="none of its tensors fit"):
        load_init(build_model(mobilenet_card()), unrelated)
    root = write_synth_set(tmp_path / "set")
    run = subprocess.run(
        [*SEBRE, "train", str(root), "--out", str(tmp_path / "m.safetensors"), "--init", str(evil), "--steps", "1"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "evil.pth: not a plain weights file" in run.stderr
    assert not marker.exists()
