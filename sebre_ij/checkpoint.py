"""The checkpoint: one safetensors file with the model card in its metadata, read without pickle.

A checkpoint is untrusted input: only safetensors are read (a pickled .pt/.pth is refused before
torch.load could run it), the card is JSON, and initial weights (`--init`) are matched by name and
shape, with what was skipped reported.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from torchvision.models.detection import MaskRCNN

from .errors import UserError
from .model import ModelCard, build_model


def save_checkpoint(path: str | Path, model: nn.Module, card: ModelCard) -> None:
    """Write weights and card in one file, atomically (a crash leaves the old file or none)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(tmp), metadata={"sebre_card": card.to_json()})
    tmp.replace(path)


def read_card(path: str | Path) -> ModelCard:
    """The model card alone, read from the safetensors header (no weights loaded)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such model file; pass a checkpoint written by `sebre train`")
    refuse_pickle(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{path}: not a safetensors checkpoint ({exc}); pass a file written by `sebre train`") from exc
    if "sebre_card" not in meta:
        raise UserError(f"{path}: safetensors file without a sebre-ij model card; pass a file written by `sebre train`")
    return ModelCard.from_json(meta["sebre_card"], source=str(path))


def refuse_pickle(path: Path) -> None:
    """Refuse, by its first bytes and without unpickling anything, a file torch.save wrote (a zip of
    pickles, or a bare pickle): loading one runs whatever code its author put in."""
    with open(path, "rb") as f:
        head = f.read(9)
    size = path.stat().st_size
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= size - 8:
        return  # a safetensors header: its length (whose first byte may well be 0x80), then JSON
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        raise UserError(
            f"{path}: a PyTorch pickle checkpoint (torch.save); sebre-ij loads only safetensors files written by "
            "`sebre train`, because unpickling a file can run code from its author; if you trust it, convert it "
            "with safetensors.torch.save_file, or train a model with `sebre train`"
        )


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu", tile_size: int | None = None, overlap: int | None = None
) -> tuple[MaskRCNN, ModelCard]:
    """Model in eval mode and its card. safetensors holds tensors only, so loading runs no code.

    `tile_size` and `overlap` override the card's for inference (the network is convolutional, so
    larger tiles than it was trained on give it more context per call)."""
    card = read_card(path)
    card.tile_size = tile_size or card.tile_size
    card.overlap = card.overlap if overlap is None else overlap
    if not 0 <= card.overlap < card.tile_size:
        raise UserError(f"overlap {card.overlap} must be at least 0 and smaller than the tile size {card.tile_size}")
    model = build_model(card)
    state = load_file(str(path), device="cpu")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(
            f"{path}: weights do not fit architecture {card.architecture!r} "
            f"({len(missing)} missing, {len(unexpected)} unexpected); re-train the model"
        )
    return model.to(device).eval(), card


# Where a torchvision file's tensors sit in our model: a whole detector (COCO Mask/Faster R-CNN) has
# our names; an ImageNet classifier's ResNet has the backbone body's names unprefixed, MobileNet's
# under "features.".
INIT_PREFIXES = (("", ""), ("backbone.body.", ""), ("backbone.body.", "features."))


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a torch file, unpickled with weights_only (no code runs); a checkpoint
    that wraps it under "model" or "state_dict" is unwrapped."""
    import pickle

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such weights file; pass a torchvision .pth file you have on disk")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before it refuses a bad file
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        raise UserError(
            f"{path}: not a plain weights file ({str(exc).splitlines()[0][:120]}); pass a torchvision "
            "state dict (.pth) such as maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("model", state.get("state_dict")), dict):
        state = state.get("model", state.get("state_dict"))
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise UserError(f"{path}: holds no state dict of named tensors; pass a torchvision weights file (.pth)")
    return state


@dataclass(frozen=True)
class InitReport:
    """How much of a model a weights file started: tensors copied, and tensors the model has."""

    taken: int
    total: int


def load_init(model: nn.Module, path: str | Path) -> InitReport:
    """Start `model` from a torchvision weights file: every tensor whose name (under the naming that
    matches most) and shape agree is copied, the rest (e.g. COCO's 91-class predictors) stay as
    built. None taken is an error."""
    state = read_weights(path)
    own = model.state_dict()
    best = {}
    for ours, theirs in INIT_PREFIXES:
        found = {
            k: state[theirs + k[len(ours) :]]
            for k in own
            if k.startswith(ours)
            and theirs + k[len(ours) :] in state
            and state[theirs + k[len(ours) :]].shape == own[k].shape
        }
        best = max(best, found, key=len)
    if not best:
        raise UserError(
            f"{path}: none of its tensors fit this model's layers by name and shape; "
            "pass weights of the same backbone (resnet50_fpn: maskrcnn_resnet50_fpn COCO or resnet50 ImageNet)"
        )
    model.load_state_dict(best, strict=False)
    return InitReport(len(best), len(own))
