"""What a `segment` run works from, all of it checked before anything is written: its options, the
slide, the model and the level at the model's µm/px, the scale, the exports' level, every plane's
tissue; and the run key a killed run must share to be resumed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .atlas_prior import AtlasPrior
from .checkpoint import load_checkpoint
from .errors import UserError
from .exports import Exports, check_roi_level
from .infer import auto_batch_size, card_prior
from .layer import check_name, check_writable
from .model import ModelCard, pick_device
from .slide import Slide, inference_level, open_slide
from .tiles import Grid
from .tissue import PlaneTissue, find_tissue

MODES = ("region", "instance")


TILE_GRID = "per-section, centred"  # in the run key: a run killed under another tiling is not resumed with this one


@dataclass(frozen=True)
class SegmentOptions:
    """How to segment. `labels` names the layer written; `overwrite` replaces one, `resume` insists
    on finishing a killed run of the same settings (the same call resumes one anyway). `mode`
    "region" keeps one label per class per section (SeBRe's rule), "instance" gives every connected
    piece its own label. `tile_size` and `overlap` override the card's, `pixel_size` the slide's
    level-0 µm/px. `tta` averages each tile with its three mirror images. `atlas_prior` weighs region
    maps against the Allen atlas where the model's card asks for it (atlas_prior.py). `batch_size`
    may be "auto" (on a GPU, from its free memory)."""

    labels: str = "sebre"
    overwrite: bool = False
    resume: bool = False
    mode: str = "region"
    device: str | None = None
    batch_size: int | str = 4
    min_score: float = 0.3
    tile_size: int | None = None
    overlap: int | None = None
    tta: bool = False
    atlas_prior: bool = True
    pixel_size: float | None = None
    progress: bool = True

    def check(self) -> None:
        if self.resume and self.overwrite:
            raise UserError("resume=True and overwrite=True contradict each other; pass one of them")
        if self.mode not in MODES:
            raise UserError(f"mode={self.mode!r} is not one of {', '.join(MODES)}")
        if self.batch_size != "auto" and not (isinstance(self.batch_size, int) and self.batch_size > 0):
            raise UserError(f"batch_size={self.batch_size!r}: give a whole number of 1 or more, or auto")


@dataclass(frozen=True)
class Inputs:
    """What a run works from, every part checked before anything is written."""

    slide: Slide
    model: torch.nn.Module
    card: ModelCard
    device: torch.device
    level: int  # the source level tiles are read from (and the layer's inference level)
    factor: float  # source pixels per model pixel (1: the level matches the card's µm/px)
    planes: list[PlaneTissue]
    batch_size: int


def check_channels(slide: Slide, card: ModelCard) -> None:
    """A channels-mode model needs the channels it was trained on; a luminance model takes any."""
    if card.input == "channels" and len(slide.channels) != len(card.channels):
        raise UserError(
            f"{slide.url}: {len(slide.channels)} channel(s) {slide.channels} but the model expects "
            f"{len(card.channels)} {card.channels}; use a model trained on this kind of slide"
        )


MIN_TILE_SHARE = 4  # a slide under 1/4 of a tile on both sides is too small to hold a section


def check_size(slide: Slide, level: int, factor: float, card: ModelCard) -> None:
    """A slide too small to hold a section at the model's µm/px is refused. A smaller one than a tile
    is not: training shows each section whole in a tile with glass around it, and inference pads a
    tile past the slide's edge with the glass the same way (a single-section crop is the common case)."""
    height, width = Grid(slide.yx_shape(level), factor).shape
    least = card.tile_size // MIN_TILE_SHARE
    if height < least and width < least:
        fits = max(32, max(height, width) * MIN_TILE_SHARE // 32 * 32)  # about MIN_TILE_SHARE times its size
        raise UserError(
            f"{slide.url}: the image is {height} x {width} px at the model's {card.pixel_size_um:g} µm/px, under "
            f"a quarter of one {card.tile_size} px tile, too small to hold a section; pass the whole slide "
            f"(or a larger crop), check its pixel size, or tile_size={fits}"
        )


MAX_RESAMPLING = 16.0  # beyond this from the nearest level, a slide's pixel size is far more likely wrong than real


def check_scale(slide: Slide, level: int, factor: float, card: ModelCard) -> None:
    """Refuse at once a slide whose nearest level is more than MAX_RESAMPLING times finer or coarser
    than the model: its pixel size is almost surely misread (nanometres taken for micrometres), and
    the run would resample the whole slide for hours."""
    if 1 / MAX_RESAMPLING <= factor <= MAX_RESAMPLING:
        return
    unit = slide.units.get("x", "no unit, read as micrometer")
    raise UserError(
        f"{slide.url}: level 0 is {slide.pixel_size(0):.4g} µm/px by its metadata ({unit}), "
        f"{max(factor, 1 / factor):.0f}x from the model's {card.pixel_size_um:g} µm/px at its nearest level; if that "
        "pixel size is wrong pass pixel_size=UM (µm per pixel of level 0), else give the slide a pyramid "
        "(bioformats2raw writes one)"
    )


def open_inputs(slide_url: str | Path, model_path: str | Path, options: SegmentOptions, exports: Exports) -> Inputs:
    """Step 1: the slide, the model and its level, the exports' level and every plane's tissue."""
    options.check()
    slide = open_slide(slide_url, options.pixel_size)
    check_name(options.labels)
    check_writable(slide, options.labels)
    device = pick_device(options.device)
    model, card = load_checkpoint(model_path, device, options.tile_size, options.overlap)
    check_channels(slide, card)
    level, factor = inference_level(slide, card.pixel_size_um)
    check_scale(slide, level, factor, card)
    check_size(slide, level, factor, card)
    check_roi_level(slide, exports.roi_level)
    planes = find_tissue(slide)
    batch_size = auto_batch_size(model, card, device) if options.batch_size == "auto" else options.batch_size
    return Inputs(slide, model, card, device, level, factor, planes, batch_size)


def run_key(model_path: str | Path, settings: dict) -> str:
    """What must match for a killed run to be resumed: the model's bytes and the run's settings."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    with open(model_path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run_settings(inputs: Inputs, options: SegmentOptions) -> dict:
    """The settings a resumed run must share with the killed one."""
    return {
        "grid": TILE_GRID,
        "level": inputs.level,
        "factor": inputs.factor,
        "batch_size": inputs.batch_size,
        "min_score": options.min_score,
        "tta": options.tta,
        "mode": options.mode,
        "card": inputs.card.to_json(),
    } | ({"atlas_prior": True} if run_prior(inputs.card, options) else {})


def run_prior(card: ModelCard, options: SegmentOptions) -> AtlasPrior | None:
    """The atlas prior of the run: the card's, on region maps, unless the options turn it off."""
    return card_prior(card) if options.atlas_prior and options.mode == "region" else None
