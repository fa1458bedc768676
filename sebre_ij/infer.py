"""Batched inference over tiles: reading of the next batch overlaps the model's work on this one.

Each tile's instances become a per-pixel class map (the best-scoring instance wins a pixel), which
is what region-mode stitching needs: one label per class per section, whatever the tile count.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from .model import ModelCard
from .tiles import Tile
from .tissue import to_unit


def read_tile(array, axes: str, tile: Tile, z: int, fill: np.ndarray) -> np.ndarray:
    """A (C, size, size) float tile in [0, 1]; the part past the level's edge is glass-coloured."""
    height, width = array.shape[axes.index("y")], array.shape[axes.index("x")]
    y1, x1 = min(tile.y + tile.size, height), min(tile.x + tile.size, width)
    index = tuple(z if a == "z" else 0 if a == "t" else slice(tile.y, y1) if a == "y" else slice(tile.x, x1) if a == "x" else slice(None)
                  for a in axes)
    data = to_unit(np.asarray(array[index]))
    if "c" not in axes:
        data = data[None]
    out = np.empty((data.shape[0], tile.size, tile.size), np.float32)
    out[:] = fill[:, None, None]
    out[:, : y1 - tile.y, : x1 - tile.x] = data
    return out


def class_map(output: dict, min_score: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel class and score from one image's detections."""
    keep = output["scores"] >= min_score
    masks, scores, labels = output["masks"][keep, 0], output["scores"][keep], output["labels"][keep]
    shape = output["masks"].shape[-2:]
    if len(scores) == 0:
        return np.zeros(shape, np.uint8), np.zeros(shape, np.float32)
    weighted = masks * scores[:, None, None]
    best = weighted.argmax(0)
    inside = masks.gather(0, best[None])[0] > 0.5
    classes = torch.where(inside, labels[best], 0)
    return classes.to(torch.uint8).cpu().numpy(), torch.where(inside, scores[best], 0).float().cpu().numpy()


def batched(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def predict_tiles(model: torch.nn.Module, card: ModelCard, tiles: list[Tile], read: Callable[[Tile], np.ndarray],
                  device: torch.device, batch_size: int = 4, min_score: float = 0.3) -> Iterable[tuple[Tile, np.ndarray, np.ndarray]]:
    """Yield (tile, classes, scores) for every tile, reading batch i+1 while the model runs batch i."""
    batches = list(batched(tiles, batch_size))
    use_amp = device.type == "cuda"
    with ThreadPoolExecutor(max_workers=2) as pool, torch.inference_mode():
        pending = pool.submit(lambda b: [read(t) for t in b], batches[0]) if batches else None
        for i, batch in enumerate(batches):
            images = pending.result()
            if i + 1 < len(batches):
                pending = pool.submit(lambda b: [read(t) for t in b], batches[i + 1])
            tensors = [torch.from_numpy(im).to(device, non_blocking=True) for im in images]
            with torch.autocast(device.type, enabled=use_amp):
                outputs = model(tensors)
            for tile, out in zip(batch, outputs):
                classes, scores = class_map(out, min_score)
                yield tile, classes, scores
