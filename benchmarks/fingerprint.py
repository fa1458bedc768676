"""Fingerprints of what `sebre` writes, to show that a change kept the outputs byte for byte.

Runs the command line only (so the same script works before and after a refactor of the API):
a light model trained for a few steps on a synthetic slide and on the GLTa sections, the demo
slide and one GLTa section segmented with every export. Prints one JSON object: the SHA-256 of
each checkpoint (tensors and card, less its timings), each file of each label layer, each
RoiSet.zip, GeoJSON and measurements CSV.

    python benchmarks/fingerprint.py OUT_DIR [--data ../shared/data] > before.json
    (change the code)
    python benchmarks/fingerprint.py OUT_DIR [--data ../shared/data] > after.json
    diff before.json after.json

OUT_DIR must be the same path both times: the label layers record the model's path.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

CLI = [sys.executable, "-m", "sebre_ij.cli"]
TEST_SECTION = "glta_s079"


def sebre(*args: str) -> None:
    done = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=1800)
    if done.returncode:
        sys.exit(f"sebre {args[0]} failed: {done.stderr.strip()[-2000:]}")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


TIMINGS = ("seconds", "cpu_seconds")


def checkpoint_digest(path: Path) -> str:
    """SHA-256 of a checkpoint's tensors and its card, less the card's wall-clock timings."""
    from safetensors import safe_open

    found = hashlib.sha256()
    with safe_open(str(path), framework="numpy") as f:
        card = json.loads(f.metadata()["sebre_card"])
        for name in sorted(f.keys()):
            found.update(name.encode() + f.get_tensor(name).tobytes())
    training = card.get("training", {})
    for key in TIMINGS:
        training.pop(key, None)
    training["loss_curve"] = [row[:2] for row in training.get("loss_curve", [])]
    found.update(json.dumps(card, sort_keys=True).encode())
    return found.hexdigest()


def tree(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under a folder but lock files, by relative path."""
    return {
        str(p.relative_to(folder)): digest(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.startswith(".sebre-lock")
    }


def segmented(slide: Path, model: Path, out: Path, *extra: str) -> dict[str, object]:
    out.mkdir(parents=True, exist_ok=True)
    exports = {"rois": out / "RoiSet.zip", "geojson": out / "regions.geojson", "measurements": out / "measurements.csv"}
    sebre(
        "segment",
        str(slide),
        "--model",
        str(model),
        *[a for k, p in exports.items() for a in (f"--{k}", str(p))],
        *extra,
    )
    return {"labels": tree(slide / "labels" / "sebre"), **{k: digest(p) for k, p in exports.items()}}


def glta_slide(data: Path, path: Path) -> None:
    """One GLTa section on a larger piece of glass, as a 3-level NGFF 0.4 image written by ome-zarr-py."""
    import zarr
    from ome_zarr.format import FormatV04
    from ome_zarr.writer import write_multiscale
    from PIL import Image

    sections = json.loads((data / "glta" / "sections.json").read_text())["sections"]
    entry = next(s for s in sections if Path(s["image"]).stem == TEST_SECTION)
    image = np.asarray(Image.open(data / "glta" / entry["image"]).convert("RGB")).transpose(2, 0, 1)
    size = entry["pixel_size_um"]
    glass = np.median(image[:, :8].reshape(3, -1), axis=1).astype(np.uint8)
    canvas = np.broadcast_to(glass[:, None, None], (3, 1536, 1536)).copy()  # room for one 320 px tile at 50 µm/px
    canvas[:, 400 : 400 + image.shape[1], 200 : 200 + image.shape[2]] = image
    image = canvas
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    scales = [[1.0, size * 2**i, size * 2**i] for i in range(3)]
    levels = [image]
    for _ in range(2):
        last = levels[-1]
        h, w = last.shape[1] // 2, last.shape[2] // 2
        levels.append(last[:, : 2 * h, : 2 * w].reshape(3, h, 2, w, 2).mean(axis=(2, 4)).astype(np.uint8))
    write_multiscale(
        levels,
        root,
        axes="cyx",
        fmt=FormatV04(),
        coordinate_transformations=[[{"type": "scale", "scale": s}] for s in scales],
        storage_options={"chunks": (3, 256, 256)},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    args = parser.parse_args()
    out = args.out.resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    found: dict[str, object] = {}

    train = out / "train.zarr"
    sebre(
        "synth",
        str(train),
        "--sections",
        "2",
        "--size",
        "2048",
        "2048",
        "--pixel-size",
        "8",
        "--seed",
        "1",
        "--stain",
        "dab",
    )
    synth_model = out / "synth.safetensors"
    sebre(
        "train",
        str(train),
        "--out",
        str(synth_model),
        "--steps",
        "12",
        "--pixel-size",
        "64",
        "--tile-size",
        "128",
        "--overlap",
        "48",
        "--batch-size",
        "2",
        "--seed",
        "0",
    )
    found["synth_model"] = checkpoint_digest(synth_model)
    demo = out / "demo.zarr"
    sebre("synth", str(demo), "--sections", "4", "--size", "4096", "4096", "--pixel-size", "4", "--seed", "2")
    found["demo"] = segmented(demo, synth_model, out / "demo", "--tta", "--min-score", "0.0")
    found["demo_instance"] = segmented(
        demo, synth_model, out / "demo-instance", "--overwrite", "--mode", "instance", "--min-score", "0.0"
    )

    glta_model = out / "glta.safetensors"
    sebre(
        "train",
        str(args.data / "glta"),
        "--out",
        str(glta_model),
        "--steps",
        "8",
        "--pixel-size",
        "50",
        "--tile-size",
        "320",
        "--overlap",
        "64",
        "--batch-size",
        "2",
        "--val-sections",
        "glta_s094",
        "--val-every",
        "4",
        "--test-sections",
        TEST_SECTION,
        "--seed",
        "0",
    )
    found["glta_model"] = checkpoint_digest(glta_model)
    section = out / f"{TEST_SECTION}.zarr"
    glta_slide(args.data, section)
    found["glta"] = segmented(section, glta_model, out / "glta", "--min-score", "0.0")
    json.dump(found, sys.stdout, indent=1, sort_keys=True)
    print()


if __name__ == "__main__":
    main()
