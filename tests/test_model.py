"""Model variants and the checkpoint contract: weights + card in one file, loaded without code."""

import pickle

import pytest
import torch
from safetensors.torch import save_file

from sebre_ij.errors import UserError
from sebre_ij.model import ARCHITECTURES, ModelCard, build_model, load_checkpoint, read_card, save_checkpoint


def card(arch="tiny_fpn", channels=("R", "G", "B"), tile=128):
    n = len(channels)
    return ModelCard(arch, ["background", "cortex", "thalamus"], [(0, 0, 0), (230, 90, 60), (0, 120, 60)], 16.0,
                     list(channels), [0.5] * n, [0.2] * n, tile_size=tile, overlap=32)


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
    from sebre_ij.errors import UserError
    from sebre_ij.model import refuse_pickle

    header = b"{" + b" " * (0x80 + 255)  # 384 bytes: the length's low byte is 0x80
    path = tmp_path / "m.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header)
    assert path.read_bytes()[0] == 0x80
    refuse_pickle(path)
    pickle_path = tmp_path / "m.pt"
    pickle_path.write_bytes(b"\x80\x04\x95" + b"\x00" * 40)
    with pytest.raises(UserError, match="pickle"):
        refuse_pickle(pickle_path)
