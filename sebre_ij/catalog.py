"""The models a user has without training one: the checkpoint shipped inside the package, and those
in the user's cache folder.

`sebre segment SLIDE` with no model uses the shipped one, learnt from sections cut from the Allen
CCFv3 atlas and real annotated sections (README, "The shipped model"); `sebre models` lists them
all with their cards.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .checkpoint import read_card
from .errors import UserError
from .model import ModelCard

MODELS = Path(__file__).resolve().parent / "models"
SHIPPED = MODELS / "mouse.safetensors"
DEFAULT = "mouse"  # the shipped model's name: `--model mouse`, and what `segment` uses without a model
CACHE_ENV = "SEBRE_CACHE"


def cache_dir() -> Path:
    """Where models a user trains or fetches are kept: $SEBRE_CACHE, else the user's cache folder."""
    root = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"), "sebre-ij"
    )
    return Path(root)


@dataclass(frozen=True)
class Listed:
    """A model found: where, whether it ships with the package, and its card (None if unreadable)."""

    path: Path
    shipped: bool
    card: ModelCard | None
    problem: str = ""


def find_model(model: str | Path | None = None) -> Path:
    """The checkpoint a user means: a file path, or the name of a shipped model ("mouse", the
    default when none is given)."""
    named = MODELS / f"{model or DEFAULT}.safetensors"
    if model is None or (isinstance(model, str) and "/" not in model and not model.endswith(".safetensors")):
        if named.is_file():
            return named
        if model is None or not Path(model).exists():
            raise UserError(
                f"{model or DEFAULT}: no such model file or shipped model; pass model=FILE (a checkpoint "
                "written by `sebre train`), or a name `sebre models` lists"
            )
    return Path(model)


def list_models() -> list[Listed]:
    """The shipped model, then every checkpoint in the cache folder, each with its card."""
    found = []
    paths = [(SHIPPED, True)] if SHIPPED.is_file() else []
    folder = cache_dir()
    if folder.is_dir():
        paths += [(p, False) for p in sorted(folder.glob("*.safetensors"))]
    for path, shipped in paths:
        try:
            found.append(Listed(path, shipped, read_card(path)))
        except UserError as exc:
            found.append(Listed(path, shipped, None, str(exc)))
    return found
