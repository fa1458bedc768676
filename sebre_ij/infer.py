"""Batched inference over tiles: reading of the next batch overlaps the model's work on this one.

Each tile's instances become a per-pixel class map (the best-scoring instance wins a pixel), which
is what region-mode stitching needs: one label per class per section, whatever the tile count.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from scipy import ndimage
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.roi_heads import expand_boxes, expand_masks

from .atlas_prior import AtlasPrior
from .model import ModelCard, detect
from .model_input import InputMap, input_map
from .tiles import Tile, tile_grid
from .tissue import SectionMap, find_sections, to_unit

# A pixel joins a region when score x mask probability passes this: about torchvision's usual
# mask probability of 0.5 at a typical score, lower because region masks are soft at their borders.
EVIDENCE_THRESHOLD = 0.15


def _window(axes: str, z: int, ys: slice, xs: slice) -> tuple:
    return tuple(
        z if a == "z" else 0 if a == "t" else ys if a == "y" else xs if a == "x" else slice(None) for a in axes
    )


def read_tile(
    array, axes: str, tile: Tile, z: int, glass: np.ndarray, factor: float = 1.0, black_is_glass: bool = False
) -> np.ndarray:
    """A (C, size, size) float tile in [0, 1]; the part past the level's edge is glass-coloured, and
    so are its black pixels (every channel 0) where `black_is_glass` (the plane holds scanner black).

    With `factor` != 1 the tile lies on a resampled grid (tiles.Grid) and is interpolated from
    the source level: Gaussian anti-aliasing, then bilinear at the inference pixels' centres."""
    if factor != 1.0:
        return _read_resampled(array, axes, tile, z, glass, factor, black_is_glass)
    height, width = array.shape[axes.index("y")], array.shape[axes.index("x")]
    y0, x0 = max(tile.y, 0), max(tile.x, 0)
    y1, x1 = min(tile.y + tile.size, height), min(tile.x + tile.size, width)
    out = np.empty((len(glass), tile.size, tile.size), np.float32)
    out[:] = glass[:, None, None]
    if y0 < y1 and x0 < x1:
        data = _source(array, axes, z, slice(y0, y1), slice(x0, x1), glass if black_is_glass else None)
        out[:, y0 - tile.y : y1 - tile.y, x0 - tile.x : x1 - tile.x] = data
    return out


def _source(array, axes: str, z: int, ys: slice, xs: slice, glass: np.ndarray | None) -> np.ndarray:
    """(C, h, w) pixels of a window in [0, 1], black ones (every channel 0) given the `glass`
    colour unless it is None."""
    data = to_unit(np.asarray(array[_window(axes, z, ys, xs)]))
    if "c" not in axes:
        data = data[None]
    if glass is not None:
        black = ~data.any(axis=0)
        if black.any():
            data = data.copy()
            data[:, black] = glass[:, None]
    return data


def tile_reader(array, axes: str, z: int, view: InputMap, factor: float) -> Callable[[Tile], np.ndarray]:
    """Model input of a tile: its pixels read (glass past the edge), then turned as `view` says."""

    def read(tile: Tile) -> np.ndarray:
        return view.apply(read_tile(array, axes, tile, z, view.fill, factor, view.black_is_glass))

    return read


def _read_resampled(
    array, axes: str, tile: Tile, z: int, glass: np.ndarray, factor: float, black_is_glass: bool
) -> np.ndarray:
    # A stride bounds memory when one source level is far finer than the model (a slide without
    # a pyramid): the window read is then at most about twice the tile per side.
    stride = max(1, int(factor // 2))
    f = factor / stride
    height, width = array.shape[axes.index("y")], array.shape[axes.index("x")]
    # the tile's pixels whose centre lies inside the level: [first, last) per axis
    first = [max(0, -origin) for origin in (tile.y, tile.x)]
    last = [
        min(tile.size, max(0, math.ceil(n / factor - 0.5 - origin)))
        for n, origin in ((height, tile.y), (width, tile.x))
    ]
    out = np.empty((len(glass), tile.size, tile.size), np.float32)
    out[:] = glass[:, None, None]
    if first[0] >= last[0] or first[1] >= last[1]:
        return out
    starts = [o + a for o, a in zip((tile.y, tile.x), first)]  # inference coordinates of the first pixels inside
    lo = [max(0, int((o + 0.5) * factor - factor) // stride * stride) for o in starts]
    hi = [
        min(n, math.ceil((o + v + 0.5) * factor + factor) + stride)
        for n, o, v in zip((height, width), (tile.y, tile.x), last)
    ]
    window = (slice(lo[0], hi[0], stride), slice(lo[1], hi[1], stride))
    data = _source(array, axes, z, *window, glass if black_is_glass else None)
    if f > 1:
        data = ndimage.gaussian_filter(data, (0, (f - 1) / 2, (f - 1) / 2), mode="nearest")
    # inference pixel i has its centre at source coordinate (i + 0.5) * factor - 0.5
    offset = [0.0] + [((o + 0.5) * factor - 0.5 - start) / stride for o, start in zip(starts, lo)]
    shape = (data.shape[0], last[0] - first[0], last[1] - first[1])
    out[:, first[0] : last[0], first[1] : last[1]] = ndimage.affine_transform(
        data, [1.0, f, f], offset=offset, output_shape=shape, order=1, mode="nearest"
    )
    return out


def class_evidence(output: dict, n_classes: int, min_score: float) -> torch.Tensor:
    """(n_classes, H, W): for each class, the best score x mask probability among its instances.

    Evidence maps, unlike instance lists, can be averaged over flipped views of a tile. A model
    with a semantic branch gives its per-pixel class probabilities instead (background in row 0)."""
    if "semantic" in output:
        return output["semantic"].float()
    masks = output["masks"][:, 0]
    height, width = masks.shape[-2:]
    evidence = torch.zeros((n_classes, height, width), dtype=torch.float32, device=masks.device)
    for mask, score, cls, box in zip(
        masks, output["scores"].tolist(), output["labels"].tolist(), output["boxes"].tolist()
    ):
        if score >= min_score:  # one in-place maximum per instance, over its box: no (instances, H, W) temporary
            ys, xs = _pasted(box, height, width)
            here = evidence[cls, ys, xs]
            torch.maximum(here, mask[ys, xs].float() * score, out=here)
    return evidence


def _pasted(box: list[float], height: int, width: int) -> tuple[slice, slice]:
    """Where an instance's mask can be non-zero: torchvision pastes it into its box grown by one
    pixel of the 28 px mask (1/28 of the side each way) and a pixel more; a tenth of the side and
    2 px each way hold that with room to spare. Elsewhere the mask is 0."""
    x0, y0, x1, y1 = box
    my, mx = 0.1 * (y1 - y0) + 2, 0.1 * (x1 - x0) + 2
    return (
        slice(max(0, math.floor(y0 - my)), min(height, math.ceil(y1 + my) + 1)),
        slice(max(0, math.floor(x0 - mx)), min(width, math.ceil(x1 + mx) + 1)),
    )


def best_classes(evidence: torch.Tensor, threshold: float = EVIDENCE_THRESHOLD) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel class (0 where no class reaches `threshold`) and its evidence."""
    best, classes = evidence.max(0)
    inside = (best > threshold) & (classes > 0)  # a semantic branch's background (row 0) can win
    return (torch.where(inside, classes, 0).to(torch.uint8).cpu().numpy(), torch.where(inside, best, 0).cpu().numpy())


def class_margins(evidence: torch.Tensor) -> np.ndarray:
    """Per pixel, how far the best class's evidence leads the second's (0 to 1): where the model's
    probabilities change smoothly, so does this lead, and the finer levels of the layer place
    outlines where it crosses from one class to the next (finer.py)."""
    if evidence.shape[0] < 2:
        return np.ones(evidence.shape[1:], np.float32)
    top = evidence.topk(2, dim=0).values
    return (top[0] - top[1]).clamp(0, 1).float().cpu().numpy()


def instance_map(
    output: dict, min_score: float, shape: tuple[int, int], threshold: float = EVIDENCE_THRESHOLD
) -> tuple[np.ndarray, np.ndarray]:
    """best_classes(class_evidence(output)) of one view on the CPU, made straight from its instances'
    masks left in their boxes (model.detect without pasting): each is resized into its box as torchvision pastes
    it, and only the box is visited. No tile-sized canvas per instance, no (classes, H, W) evidence.

    Instances go in class order and a pixel changes hands only to a strictly higher score x mask,
    so on a tie the lower class keeps it, as best_classes's argmax gives."""
    height, width = shape
    masks, scale = expand_masks(output["box_masks"], padding=1)  # torchvision's paste, step by step
    boxes = expand_boxes(output["boxes"], scale).to(torch.int64).tolist()
    scores, labels = output["scores"].tolist(), output["labels"].tolist()
    best, classes = np.zeros(shape, np.float32), np.zeros(shape, np.uint8)
    for k in sorted(range(len(scores)), key=labels.__getitem__):
        x0, y0, x1, y1 = boxes[k]
        xa, xb, ya, yb = max(x0, 0), min(x1 + 1, width), max(y0, 0), min(y1 + 1, height)
        if scores[k] < min_score or xa >= xb or ya >= yb:
            continue
        mask = torch.nn.functional.interpolate(
            masks[k : k + 1], size=(max(y1 - y0 + 1, 1), max(x1 - x0 + 1, 1)), mode="bilinear", align_corners=False
        )[0, 0]
        value = mask[ya - y0 : yb - y0, xa - x0 : xb - x0].numpy() * np.float32(scores[k])
        here = best[ya:yb, xa:xb]
        better = value > here
        np.copyto(here, value, where=better)
        np.copyto(classes[ya:yb, xa:xb], np.uint8(labels[k]), where=better)
    inside = best > threshold
    return np.where(inside, classes, 0).astype(np.uint8), np.where(inside, best, 0).astype(np.float32)


def predict_image(
    model: torch.nn.Module,
    card: ModelCard,
    image: np.ndarray,
    *,
    device: torch.device,
    batch_size: int = 4,
    min_score: float = 0.3,
    flips: bool = False,
    atlas_prior: bool | AtlasPrior = True,
) -> np.ndarray:
    """The class map of a whole (C, H, W) image in [0, 1] already at the card's µm/px, made as
    `sebre segment` makes a label layer: sections found on the image, the glass colour for padding,
    overlapping tiles whose cores are written, nothing outside the sections, the card's atlas prior
    unless `atlas_prior` is false (or this prior, where it is one). For validation and scoring of
    images held in memory."""
    sections = find_sections(image)
    out = np.zeros(image.shape[1:], np.uint8)
    tiles = tile_grid(image.shape[1:], card.tile_size, card.overlap, SectionMap(sections, (0, 0), sections.shape))
    read = tile_reader(image, "cyx", 0, input_map(card.input, image, sections), 1.0)
    predicted = predict_tiles(
        model,
        card,
        tiles,
        read,
        device=device,
        batch_size=batch_size,
        min_score=min_score,
        flips=flips,
        instances=not card.semantic,
        prior=atlas_prior if isinstance(atlas_prior, AtlasPrior) else card_prior(card) if atlas_prior else None,
    )
    # closed whatever happens here: the generator holds torch's inference mode while it is suspended,
    # and a training loop that validates with it must get its gradients back
    with contextlib.closing(predicted):
        for tile, classes, *_ in predicted:
            ys, xs = tile.core
            own = tile.owns(sections[ys, xs])
            window = classes[ys.start - tile.y : ys.stop - tile.y, xs.start - tile.x : xs.stop - tile.x]
            out[ys, xs][own] = window[own]
    return out


# Test-time views: as is, mirrored left-right, top-bottom and both (about +0.04 mean Dice on the demo).
FLIPS = [(), (-1,), (-2,), (-2, -1)]


def _unflip(evidence: torch.Tensor, dims: tuple) -> torch.Tensor:
    return evidence.flip(dims) if dims else evidence


def _to_device(image: np.ndarray, device: torch.device) -> torch.Tensor:
    """On CUDA, through pinned host memory so the copy runs beside the GPU's work."""
    tensor = torch.from_numpy(image)
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor


def card_prior(card: ModelCard) -> AtlasPrior | None:
    """The atlas prior a model's card asks for (None: none, or classes the atlas lacks)."""
    return AtlasPrior.for_model(card.classes, card.pixel_size_um, card.atlas_prior) if card.semantic else None


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """Autocast precision: bf16 on GPUs that have it (no overflow), else fp16; none on the CPU."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def auto_batch_size(
    model: torch.nn.Module, card: ModelCard, device: torch.device, cpu_default: int = 4, most: int = 64
) -> int:
    """Tiles per model call: on CUDA as many as half the free memory holds, from the peak memory of
    one probe tile; on the CPU `cpu_default` (bigger batches there only add latency)."""
    if device.type != "cuda":
        return cpu_default
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    with torch.inference_mode(), torch.autocast("cuda", dtype=amp_dtype(device)):
        model([torch.rand(len(card.channels), card.tile_size, card.tile_size, device=device)])
    per_tile = max(torch.cuda.max_memory_allocated(device) - before, 1)
    return int(max(1, min(most, free // 2 // per_tile)))


def batched(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def predict_tiles(
    model: torch.nn.Module,
    card: ModelCard,
    tiles: list[Tile],
    read: Callable[[Tile], np.ndarray],
    *,
    device: torch.device,
    batch_size: int = 4,
    min_score: float = 0.3,
    flips: bool = False,
    instances: bool = True,
    prior: AtlasPrior | None = None,
) -> Iterable[tuple]:
    """Yield (tile, classes, scores[, margins]) for every tile (margins: class_margins, where the
    class maps come from class evidence). Beside the model's work on batch i, threads read
    batch i+1 and turn batch i-1's instances into class maps, so the model waits for neither.

    With `flips`, each tile also runs mirrored three ways and the four views' evidence is averaged.
    Without `instances`, a model whose semantic branch gives the class maps runs that branch alone
    (the same maps, without the RPN and RoI heads' work). With a `prior`, each tile's semantic
    class probabilities are weighed against the atlas cut at its section's plane first."""
    batches = list(batched(tiles, batch_size))
    precision = amp_dtype(device)
    dims = FLIPS if flips else FLIPS[:1]
    # one view on the CPU: class maps come from the masks in their boxes (instance_map), never pasted
    paste = not (device.type == "cpu" and len(dims) == 1)
    # the helper threads' torch work runs on one core each: a second OpenMP team per thread
    # would fight the model's for the same cores
    with (
        ThreadPoolExecutor(max_workers=2, initializer=torch.set_num_threads, initargs=(1,)) as pool,
        torch.inference_mode(),
    ):
        pending = pool.submit(lambda b: [read(t) for t in b], batches[0]) if batches else None
        maps = None
        for i, batch in enumerate(batches):
            images = pending.result()
            if i + 1 < len(batches):
                pending = pool.submit(lambda b: [read(t) for t in b], batches[i + 1])
            tensors = [_to_device(im, device) for im in images]
            views = [t.flip(d) if d else t for d in dims for t in tensors]
            with torch.autocast(device.type, dtype=precision, enabled=precision is not None):
                outputs = run_model(model, views, paste_masks=paste, instances=instances)
            if maps is not None:
                yield from maps.result()
            maps = pool.submit(_class_maps, batch, outputs, dims, len(card.classes), min_score, prior)
        if maps is not None:
            yield from maps.result()


def run_model(
    model: torch.nn.Module, images: list[torch.Tensor], *, paste_masks: bool, instances: bool = True
) -> list[dict]:
    """A batch through the model: a Mask R-CNN of model.py by `detect` (its masks left in their
    boxes unless `paste_masks`; its semantic branch alone without `instances`), any other detector
    as it is called."""
    if isinstance(model, MaskRCNN):
        return detect(model, images, paste_masks=paste_masks, instances=instances)
    return model(images)


def _class_maps(
    batch: list[Tile],
    outputs: list[dict],
    dims: list[tuple],
    n_classes: int,
    min_score: float,
    prior: AtlasPrior | None = None,
) -> list[tuple]:
    """(tile, classes, scores[, margins]) of a batch from the model's outputs for all its views:
    straight from the instances where their masks were left in their boxes (one view on the CPU),
    else by each view's class evidence, averaged, with its class margins (class_margins)."""
    with torch.inference_mode():
        out = []
        for j, tile in enumerate(batch):
            views = [outputs[k * len(batch) + j] for k in range(len(dims))]
            if "box_masks" in views[0] and "semantic" not in views[0]:  # no margins: finer levels by nearest pixel
                out.append((tile, *instance_map(views[0], min_score, (tile.size, tile.size))))
                continue
            evidence = sum(
                _unflip(class_evidence(view, n_classes, min_score), d) for view, d in zip(views, dims)
            ) / len(dims)
            if prior is not None and "semantic" in views[0]:
                evidence = torch.from_numpy(prior.apply(evidence.cpu().numpy())).to(evidence.device)
            out.append((tile, *best_classes(evidence), class_margins(evidence)))
        return out
