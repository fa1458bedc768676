"""OME-Zarr image stores written from arrays held in memory: the synthetic slides of `sebre synth`,
the demo, the tests and the benchmarks, in either NGFF version, dense or sparse.

A dense store has the image's pyramid and the truth as label layer `labels/truth`; a sparse one
places the image on a much larger slide whose glass is zarr's fill value, as a scanner's sparse
store is, so only the tissue's chunks exist on disk.
"""

from __future__ import annotations

import os

import numpy as np
import zarr
from ome_zarr.scale import Methods
from ome_zarr.writer import write_image, write_labels

from .ngff import VERSIONS, ngff_format, ome_attrs
from .slide import LENGTH_UM
from .synth import CLASSES, synth_slide


def write_slide(
    path,
    image: np.ndarray,
    labels: np.ndarray,
    pixel_size: float,
    *,
    ngff: str = "0.4",
    chunk: int = 256,
    levels: int | None = None,
    unit: str = "micrometer",
) -> None:
    """Write a multiscale OME-Zarr image (c, y, x) with the label layer ``labels/truth``.

    Parameters
    ----------
    path : str or os.PathLike
        New store; an existing path raises FileExistsError (ome-zarr-py would delete it).
    image : (3, H, W) uint8
    labels : (H, W) uint8, class ids into `CLASSES`
    pixel_size : float
        µm/px at level 0; each level doubles it.
    ngff : {"0.4", "0.5"}
        0.4 writes zarr v2, 0.5 zarr v3.
    chunk : int
        Chunk side in y and x; image chunks hold all three channels.
    levels : int, optional
        Number of levels; default halves until the smaller side is <= 256.
    unit : str
        The space axes' unit; the scales are `pixel_size` in it (a length NGFF names).
    """
    path = os.fspath(path)
    if os.path.exists(path):
        raise FileExistsError(path)
    if ngff not in VERSIONS:
        raise ValueError(f"ngff must be one of {sorted(VERSIONS)}, got {ngff!r}")
    store_format = ngff_format(ngff)
    fmt = store_format.writer_format()
    if levels is None:
        levels = _auto_levels(labels.shape)
    factors = [2**i for i in range(1, levels)]
    units = {"y": unit, "x": unit}
    size = float(pixel_size) / LENGTH_UM[unit]
    scale = {"y": size, "x": size}
    group = zarr.open_group(path, mode="w-", zarr_format=store_format.zarr_format)
    write_image(
        image,
        group,
        scale_factors=factors,
        method=Methods.LOCAL_MEAN,
        fmt=fmt,
        axes=["c", "y", "x"],
        axes_units=units,
        scale={"c": 1.0, **scale},
        storage_options={"chunks": (3, chunk, chunk)},
        name="synthetic",
        omero=_omero(),
    )
    write_labels(
        labels,
        group,
        name="truth",
        scaler=None,
        scale_factors=factors,
        method=Methods.NEAREST,
        fmt=fmt,
        axes=["y", "x"],
        axes_units=units,
        scale=scale,
        storage_options={"chunks": (chunk, chunk)},
        label_metadata=_label_metadata(labels),
    )
    labels_group = group["labels"]
    store_format.set_attrs(labels_group, store_format.labels_attrs(ome_attrs(labels_group)))


def _auto_levels(shape: tuple[int, ...]) -> int:
    """Levels needed for 2x halving until the smaller side is at most 256 px."""
    side, levels = min(shape[-2:]), 1
    while side > 256:
        side //= 2
        levels += 1
    return levels


def _omero() -> dict:
    """Channel names and colours so viewers show the slide as RGB brightfield."""
    window = {"min": 0, "max": 255, "start": 0, "end": 255}
    channels = [
        {"label": name, "color": color, "window": window, "active": True}
        for name, color in (("R", "FF0000"), ("G", "00FF00"), ("B", "0000FF"))
    ]
    return {"channels": channels, "rdefs": {"model": "color"}}


def _label_metadata(labels: np.ndarray) -> dict:
    """image-label colours and properties for the classes present (0, background, has none)."""
    present = [int(k) for k in np.unique(labels) if k != 0]
    colors = [{"label-value": k, "rgba": [*CLASSES[k][1], 255]} for k in present]
    props = [{"label-value": k, "name": CLASSES[k][0], "class": k} for k in present]
    return {"colors": colors, "properties": props}


def make_slide_store(
    path,
    sections: int = 4,
    size: tuple[int, int] = (4096, 4096),
    pixel_size: float = 4.0,
    seed: int = 0,
    *,
    ngff: str = "0.4",
    stain: str | None = None,
    chunk: int = 256,
) -> None:
    """Synthesise a slide and write it to a new OME-Zarr store at `path`: the `sebre synth` step."""
    image, labels = synth_slide(sections, size, pixel_size, seed, stain)
    write_slide(path, image, labels, pixel_size, ngff=ngff, chunk=chunk)


def _mean_pyramid(level0: np.ndarray, n: int) -> list[np.ndarray]:
    """2 x 2 mean downsampling, as scanners write their pyramids."""
    levels = [level0]
    for _ in range(1, n):
        a = levels[-1].astype(np.float32)
        h, w = a.shape[1] // 2 * 2, a.shape[2] // 2 * 2
        levels.append(a[:, :h, :w].reshape(a.shape[0], h // 2, 2, w // 2, 2).mean((2, 4)).round().astype(np.uint8))
    return levels


def write_sparse_slide(
    path, image: np.ndarray, scale: int, pixel_size: float, *, chunk: int = 256, min_pixel_size: float = 0.0
) -> None:
    """A slide `scale` times the image's side, mostly glass, as a scanner's sparse store: NGFF 0.4,
    the (3, H, W) uint8 image at a chunk-aligned spot near the middle, and glass (zarr's fill value,
    the image's border colour) elsewhere, so only the tissue's chunks exist on disk.

    Levels halve until the long side is at most 1024 and the pixel size reaches `min_pixel_size`."""
    shape = (image.shape[1] * scale, image.shape[2] * scale)
    n = 1
    while max(shape) / 2 ** (n - 1) > 1024 or pixel_size * 2 ** (n - 1) < min_pixel_size:
        n += 1
    align = chunk * 2 ** (n - 1)
    offset = [(s - i) // 2 // align * align for s, i in zip(shape, image.shape[1:])]
    border = np.concatenate([image[:, :8].reshape(3, -1), image[:, -8:].reshape(3, -1)], axis=1)
    v04 = ngff_format("0.4")
    root = zarr.open_group(os.fspath(path), mode="w-", zarr_format=v04.zarr_format)
    datasets = []
    for k, content in enumerate(_mean_pyramid(image, n)):
        f = 2**k
        arr = root.create_array(
            str(k),
            shape=(3, -(-shape[0] // f), -(-shape[1] // f)),
            chunks=(3, chunk, chunk),
            dtype="uint8",
            fill_value=int(np.median(border)),
            **v04.array_options("cyx"),
        )
        arr[
            :, offset[0] // f : offset[0] // f + content.shape[1], offset[1] // f : offset[1] // f + content.shape[2]
        ] = content
        datasets.append(
            {
                "path": str(k),
                "coordinateTransformations": [{"type": "scale", "scale": [1.0, pixel_size * f, pixel_size * f]}],
            }
        )
    axes = [
        {"name": "c", "type": "channel"},
        {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"},
    ]
    multiscales = [{"version": v04.version, "name": "sparse", "axes": axes, "datasets": datasets}]
    v04.set_attrs(root, {"multiscales": multiscales, "omero": _omero()})


def write_scan(path, image: np.ndarray, image_pixel_size: float, level0_pixel_size: float, *, chunk: int = 512) -> None:
    """A scanner's slide of real geometry from a (3, H, W) uint8 image at `image_pixel_size` µm/px:
    NGFF 0.4, level 0 at `level0_pixel_size` (a power-of-two fraction of the image's), levels
    halving until the long side is at most 1024. The image fills the levels at its pixel size and
    coarser; the finer levels are declared but hold only zarr's fill value (the glass colour), as
    `segment` never reads them: the labels are written at every level all the same."""
    steps = image_pixel_size / level0_pixel_size
    k = round(np.log2(steps))
    if k < 0 or abs(2**k - steps) > 1e-9:
        raise ValueError(f"image_pixel_size / level0_pixel_size must be a power of two, got {steps}")
    shape = (image.shape[1] * 2**k, image.shape[2] * 2**k)
    n = 1
    while max(shape) / 2 ** (n - 1) > 1024:
        n += 1
    border = np.concatenate([image[:, :8].reshape(3, -1), image[:, -8:].reshape(3, -1)], axis=1)
    v04 = ngff_format("0.4")
    root = zarr.open_group(os.fspath(path), mode="w-", zarr_format=v04.zarr_format)
    coarse = _mean_pyramid(image, max(n - k, 1))
    datasets = []
    for level in range(n):
        f = 2**level
        arr = root.create_array(
            str(level),
            shape=(3, -(-shape[0] // f), -(-shape[1] // f)),
            chunks=(3, chunk, chunk),
            dtype="uint8",
            fill_value=int(np.median(border)),
            **v04.array_options("cyx"),
        )
        if level >= k:
            content = coarse[level - k]
            arr[:, : content.shape[1], : content.shape[2]] = content
        scale = level0_pixel_size * f
        datasets.append(
            {"path": str(level), "coordinateTransformations": [{"type": "scale", "scale": [1.0, scale, scale]}]}
        )
    axes = [
        {"name": "c", "type": "channel"},
        {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"},
    ]
    multiscales = [{"version": v04.version, "name": "scan", "axes": axes, "datasets": datasets}]
    v04.set_attrs(root, {"multiscales": multiscales, "omero": _omero()})
