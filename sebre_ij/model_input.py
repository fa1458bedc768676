"""What the model sees: a slide's pixels turned into the model's input channels.

The model card names one of two ways (`ModelCard.input`):

- "channels": the slide's channels as they are, scaled to [0, 1] by dtype; the slide must have the
  card's channels (a model trained on one kind of slide);
- "luminance": one channel, for any stain or modality. The mean of the slide's channels, inverted
  where the glass is darker than the tissue (fluorescence, two-photon), then stretched so that the
  glass is 1 and the darkest tissue (its 1st percentile) is 0. A DAB, Nissl or H&E section and a
  fluorescence scan of the same tissue then look alike, dark structure on bright glass, whatever
  their colour, bit depth or exposure.

The stretch is measured once per plane on the coarse level (the tissue step), never per tile, so
neighbouring tiles see the same numbers; training measures it the same way on each section.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .tissue import bright_glass, find_sections, glass_colour, to_unit, without_scanner_black

INPUT_MODES = ("channels", "luminance")
LUMINANCE = ["luminance"]
TISSUE_PERCENTILE = 1.0  # the tissue luminance that becomes 0
MIN_CONTRAST = 0.05  # glass and darkest tissue kept at least this share of the image's own range apart
CEILING = 1.25  # luminance above the glass (bright dust, speckle) is clipped here


@dataclass(frozen=True)
class InputMap:
    """How one plane's pixels (C, H, W in [0, 1]) become model input; picklable, for Dask workers."""

    mode: str
    glass_colour: tuple[float, ...]  # per slide channel: what the glass looks like
    invert: bool = False
    low: float = 0.0  # luminance (after inversion) that becomes 0
    glass: float = 1.0  # and that becomes 1
    black_is_glass: bool = False  # the plane holds scanner black (tissue.scanner_black): tiles read it as glass

    @property
    def fill(self) -> np.ndarray:
        """Slide pixels past the slide's edge: the glass, per slide channel."""
        return np.asarray(self.glass_colour, np.float32)

    def apply(self, image: np.ndarray) -> np.ndarray:
        """Model input of a (C, H, W) image already in [0, 1].

        Notes
        -----
        In "channels" mode this is the image itself. In "luminance" mode it equals
        clip((g - low) / (glass - low), 0, CEILING)[None], with g the channel mean, or 1 minus it
        if `invert`."""
        if self.mode != "luminance":
            return image
        grey = image.mean(axis=0, dtype=np.float32)
        if self.invert:
            grey = 1.0 - grey
        out = (grey - np.float32(self.low)) / np.float32(self.glass - self.low)
        return np.clip(out, 0.0, CEILING, out=out)[None]


def input_map(mode: str, image: np.ndarray, sections: np.ndarray) -> InputMap:
    """The map of a plane from its coarse (C, H, W) image and its section labels (0: glass)."""
    image, black = without_scanner_black(image)
    colour = tuple(float(c) for c in glass_colour(image, sections))
    if mode != "luminance":
        return InputMap(mode, colour, black_is_glass=black)
    glass_px = sections == 0
    grey = image.mean(axis=0)
    tissue = grey[~glass_px] if (~glass_px).any() else grey.ravel()
    if glass_px.any() and (~glass_px).any():
        invert = bool(np.median(grey[glass_px]) < np.median(tissue))
    else:  # all glass or all tissue: the picture's own brightness tells
        invert = not bright_glass(image)
    if invert:
        grey, tissue = 1.0 - grey, 1.0 - tissue
    glass = float(np.median(grey[glass_px])) if glass_px.any() else float(np.percentile(grey, 99.5))
    # a dim fluorescence scan may span a thousandth of its dtype's range: the floor is relative to it
    lowest, highest = np.percentile(grey, [0.5, 99.5])
    floor = max(MIN_CONTRAST * float(highest - lowest), 1e-6)
    low = min(float(np.percentile(tissue, TISSUE_PERCENTILE)), glass - floor)
    return InputMap(mode, colour, invert, low, glass, black)


def image_input(mode: str, image: np.ndarray) -> np.ndarray:
    """Model input of a whole section image held in memory, its map measured on the image itself
    (its own sections found as `sebre segment` finds them on a coarse level)."""
    if mode != "luminance":
        return image
    return input_map(mode, image, find_sections(image)).apply(to_unit(image))
