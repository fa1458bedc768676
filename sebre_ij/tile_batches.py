"""Training batches: tiles from a source (sampling.py) with their targets, made in the training
process or in DataLoader workers.

Mask R-CNN's targets have one instance per connected piece of each class, SeBRe's region rule
applied tile by tile; pieces under MIN_INSTANCE_PX pixels are left out. A semantic branch trained
alone needs the per-pixel map only.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage as ndi

MIN_INSTANCE_PX = 16


def targets_from_classes(classes: np.ndarray) -> dict[str, torch.Tensor]:
    """Mask R-CNN targets: one instance per connected piece of each class present."""
    masks, labels, boxes = [], [], []
    for cls in np.unique(classes):
        if cls == 0:
            continue
        pieces, n = ndi.label(classes == cls)
        for i, sl in enumerate(ndi.find_objects(pieces), start=1):
            mask = pieces == i
            if mask.sum() < MIN_INSTANCE_PX:
                continue
            masks.append(mask)
            labels.append(int(cls))
            boxes.append([sl[1].start, sl[0].start, sl[1].stop, sl[0].stop])
    size = classes.shape
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "masks": torch.from_numpy(np.stack(masks)).to(torch.uint8)
        if masks
        else torch.zeros((0, *size), dtype=torch.uint8),
        "semantic": torch.from_numpy(classes.astype(np.int64)),  # for a semantic branch; Mask R-CNN ignores it
    }


def semantic_target(classes: np.ndarray) -> dict[str, torch.Tensor]:
    """The per-pixel target alone, for a semantic branch trained without the Mask R-CNN losses."""
    return {"semantic": torch.from_numpy(classes.astype(np.int64))}


class TileBatches(torch.utils.data.IterableDataset):
    """Endless batches of (images, targets) from a tile source (sampling.py). In the main process
    they come from `rng`; each DataLoader worker draws from its own generator seeded with (seed,
    worker id), so a run repeats for a given seed and worker count while a GPU is fed by several
    CPU cores. Without `instances` the targets hold the per-pixel map alone."""

    def __init__(self, sampler, batch_size: int, rng: np.random.Generator, seed: int, instances: bool = True):
        self.sampler, self.batch_size, self.rng, self.seed = sampler, batch_size, rng, seed
        self.targets = targets_from_classes if instances else semantic_target

    def __iter__(self):
        worker = torch.utils.data.get_worker_info()
        rng = self.rng if worker is None else np.random.default_rng([self.seed, worker.id])
        while True:
            tiles = [self.sampler.tile(rng) for _ in range(self.batch_size)]
            yield [torch.from_numpy(im) for im, _ in tiles], [self.targets(c) for _, c in tiles]


def batches(sampler, batch_size: int, rng: np.random.Generator, seed: int, workers: int, instances: bool = True):
    """An iterator over TileBatches, prepared by `workers` processes (0: in this one)."""
    stream = TileBatches(sampler, batch_size, rng, seed, instances)
    if not workers:
        return iter(stream)
    return iter(
        torch.utils.data.DataLoader(
            stream, batch_size=None, num_workers=workers, prefetch_factor=4, persistent_workers=True
        )
    )
