"""`sebre demo`, the README's first command, end to end with a short training: every output written,
Dice printed, and the cached model reused by the next run."""

import os
import subprocess
import sys

import zarr


def test_demo_writes_every_output_and_reuses_its_cached_model(tmp_path):
    env = {**os.environ, "SEBRE_CACHE": str(tmp_path / "cache")}
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "sebre_ij.cli", "demo", "--out", str(out), "--steps", "20"]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "mean Dice" in first.stdout
    models = list((tmp_path / "cache").glob("demo-*.safetensors"))
    assert len(models) == 1
    for name in ("RoiSet.zip", "regions.geojson", "measurements.csv", "preview.png"):
        assert (out / name).stat().st_size > 0, name
    labels = zarr.open_group(str(out / "demo.zarr" / "labels"), mode="r")
    assert "sebre" in labels.attrs["labels"]
    stamp = models[0].stat().st_mtime_ns
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stderr[-2000:]
    assert models[0].stat().st_mtime_ns == stamp  # cached: not trained again
