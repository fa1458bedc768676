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

from .errors import UserError
from .model import ModelCard, read_card

SHIPPED = Path(__file__).resolve().parent / "models" / "mouse.safetensors"
CACHE_ENV = "SEBRE_CACHE"


def cache_dir() -> Path:
    """Where models a user trains or fetches are kept: $SEBRE_CACHE, else the user's cache folder."""
    root = os.environ.get(CACHE_ENV) or os.path.join(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"), "sebre-ij")
    return Path(root)


@dataclass(frozen=True)
class Listed:
    """A model found: where, whether it ships with the package, and its card (None if unreadable)."""

    path: Path
    shipped: bool
    card: ModelCard | None
    problem: str = ""


def default_model() -> Path:
    """The shipped checkpoint, which `segment` uses when no model is given."""
    if not SHIPPED.is_file():
        raise UserError(f"{SHIPPED}: the shipped model is missing from this install; reinstall sebre-ij, or pass "
                        "model=FILE (a checkpoint written by `sebre train`)")
    return SHIPPED


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
