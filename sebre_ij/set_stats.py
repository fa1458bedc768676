"""What a training set looks like, as the model card and the loss need it: per-channel
normalisation, the glass colour for padding, and the per-pixel loss's class weights, over one set
of sections or over several sources mixed by their share of tiles."""

from __future__ import annotations

import numpy as np
import torch

from .datasets import Example


def channel_stats(examples: list[Example]) -> tuple[list[float], list[float], np.ndarray]:
    """Per-channel mean and std (the card's normalisation) and the glass colour used for padding."""
    flat = np.concatenate([e.image.reshape(e.image.shape[0], -1) for e in examples], axis=1)
    glass = np.concatenate([e.image[:, e.classes == 0] for e in examples], axis=1)
    colour = np.median(glass, axis=1) if glass.size else flat.mean(axis=1)
    return flat.mean(axis=1).tolist(), np.maximum(flat.std(axis=1), 1e-3).tolist(), colour.astype(np.float32)


def class_counts(examples: list[Example], n_classes: int) -> np.ndarray:
    """Pixels of each class over the sections."""
    pixels = np.concatenate([e.classes.ravel() for e in examples])
    return np.bincount(pixels, minlength=n_classes)[:n_classes].astype(float)


def weights_from_counts(counts: np.ndarray) -> torch.Tensor:
    """Per-class weights of the per-pixel loss: 1 / sqrt(pixel share), mean 1 over the classes
    present; classes absent from training weigh nothing. `counts` may be pixels or shares."""
    weights = np.where(counts > 0, 1.0 / np.sqrt(np.where(counts > 0, counts, 1) / counts.sum()), 0.0)
    return torch.tensor(weights / weights[counts > 0].mean(), dtype=torch.float32)


def semantic_weights(examples: list[Example], n_classes: int) -> torch.Tensor:
    """The per-pixel loss's class weights of one set of sections (`weights_from_counts`)."""
    return weights_from_counts(class_counts(examples, n_classes))


Sources = list[tuple[float, list[Example]]]
"""The sections tiles come from, by source (real, atlas), each with its share of the tiles."""


def mixed_weights(sources: Sources, n_classes: int) -> torch.Tensor:
    """Class weights of tiles drawn from several sources: each source's pixel shares weighted by its share of tiles."""
    if len(sources) == 1:
        return semantic_weights(sources[0][1], n_classes)
    shares = [class_counts(examples, n_classes) for _, examples in sources]
    return weights_from_counts(sum(w * c / c.sum() for (w, _), c in zip(sources, shares)))


def mixed_stats(sources: Sources, mode: str) -> tuple[list[float], list[float], np.ndarray]:
    """The card's normalisation over the sources (each weighted by its share of tiles) and the
    first source's glass colour for padding; in luminance mode the glass is 1 by definition."""
    mean, std, glass = channel_stats(sources[0][1])
    if len(sources) > 1:
        flats = [
            np.concatenate([e.image.reshape(e.image.shape[0], -1) for e in examples], axis=1) for _, examples in sources
        ]
        means = [f.mean(axis=1) for f in flats]
        total = sum(w * m for (w, _), m in zip(sources, means))
        var = sum(w * (f.var(axis=1) + (m - total) ** 2) for (w, _), f, m in zip(sources, flats, means))
        mean, std = total.tolist(), np.maximum(np.sqrt(var), 1e-3).tolist()
    return mean, std, np.ones(1, np.float32) if mode == "luminance" else glass
