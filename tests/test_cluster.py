"""Segment on Dask distributed: a LocalCluster of 2 worker processes, and an existing scheduler
named by address, give the labels of the in-process run."""

import hashlib
import json
import os
import shutil
import subprocess

import pytest
import torch
from conftest import SEBRE
from distributed import LocalCluster

from sebre_ij.checkpoint import save_checkpoint
from sebre_ij.cluster import ClusterOptions, connect, task_batches
from sebre_ij.errors import UserError
from sebre_ij.model import ModelCard, random_model
from sebre_ij.segment import SegmentOptions, segment
from sebre_ij.slide import open_slide
from sebre_ij.stores import make_slide_store
from sebre_ij.synth import CLASSES

DISTRIBUTED_MARKS = {"PYTHONHASHSEED", "__DASK_PARENT_PID"}  # distributed's own, set when unset: not ours to undo


def test_a_local_cluster_gets_its_environment_without_changing_ours():
    """The workers start with one OpenMP thread each; this process keeps its environment (later
    subprocesses would inherit OMP_NUM_THREADS=1), but for the marks distributed itself adds."""
    before = dict(os.environ)
    with connect(ClusterOptions(workers=1)) as client:
        inside = dict(os.environ)
        workers = client.run(lambda: os.environ.get("OMP_NUM_THREADS"))
    assert list(workers.values()) == ["1"]
    for env in (inside, dict(os.environ)):
        assert {k: env[k] for k in before} == before
        assert set(env) - set(before) <= DISTRIBUTED_MARKS


def label_arrays(store, name):
    """Hashes of every chunk of every array of a label layer (not its metadata)."""
    root = store / "labels" / name
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.startswith((".z", "zarr.json"))
    }


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A 2-section slide, a random-weight model (many detections, so many regions cross tiles)
    and the in-process result of both modes."""
    work = tmp_path_factory.mktemp("cluster")
    make_slide_store(work / "slide.zarr", sections=2, size=(1024, 1536), pixel_size=8.0, seed=5)
    names = [n for n, _ in CLASSES]
    card = ModelCard("tiny_fpn", names, [c for _, c in CLASSES], 16.0, ["R", "G", "B"], [0.8] * 3, [0.2] * 3, 64, 16)
    save_checkpoint(work / "m.safetensors", random_model(card, 1), card)  # random weights that find regions
    shutil.copytree(work / "slide.zarr", work / "local.zarr")
    results = {
        mode: segment(
            work / "local.zarr",
            work / "m.safetensors",
            SegmentOptions(labels=mode, mode=mode, min_score=0.0, batch_size=2, progress=False),
        )
        for mode in ("region", "instance")
    }
    return work, results


@pytest.mark.parametrize("mode", ["region", "instance"])
def test_local_cluster_of_two_workers_gives_the_in_process_labels(work, tmp_path, mode):
    work, local = work
    store = tmp_path / "slide.zarr"
    shutil.copytree(work / "slide.zarr", store)
    result = segment(
        store,
        work / "m.safetensors",
        SegmentOptions(labels=mode, mode=mode, min_score=0.0, batch_size=2, progress=False),
        cluster=ClusterOptions(workers=2),
    )
    assert result.tiles == local[mode].tiles > 8 and len(local[mode].regions) > 2
    assert label_arrays(store, mode) == label_arrays(work / "local.zarr", mode)
    assert result.regions == local[mode].regions
    assert len(label_arrays(store, mode)) > 4  # several chunks written
    assert "regions" not in open_slide(store).group["labels"][mode]  # instance scratch dropped


def test_the_finer_levels_are_built_by_the_workers(work, tmp_path, monkeypatch):
    """On a cluster the levels finer than the inference level are written by the workers, band by
    band (this process would fail at the first chunk row), and equal the in-process run's."""
    import sebre_ij.finer

    work, local = work
    store = tmp_path / "slide.zarr"
    shutil.copytree(work / "slide.zarr", store)

    def not_here(*args):
        raise AssertionError("a finer chunk row built by the client")

    monkeypatch.setattr(sebre_ij.finer, "_timed_row", not_here)
    result = segment(
        store,
        work / "m.safetensors",
        SegmentOptions(labels="region", min_score=0.0, batch_size=2, progress=False),
        cluster=ClusterOptions(workers=2),
    )
    assert result.level > 0 and "0" in result.level_seconds  # level 0 is finer than the inference level
    written = label_arrays(store, "region")
    assert any(key.startswith("s0/") for key in written)
    assert written == label_arrays(work / "local.zarr", "region")


def test_existing_scheduler_by_address_through_the_cli(work, tmp_path):
    """Also a slide named by an fsspec URL: the workers open it and write into it themselves."""
    work, _ = work
    store = tmp_path / "slide.zarr"
    shutil.copytree(work / "slide.zarr", store)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        run = subprocess.run(
            [
                *SEBRE,
                "segment",
                f"file://{store}",
                "--model",
                str(work / "m.safetensors"),
                "--labels",
                "region",
                "--min-score",
                "0",
                "--batch-size",
                "2",
                "--scheduler",
                cluster.scheduler_address,
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
    assert run.returncode == 0, run.stderr
    assert "Dask dashboard: http" in run.stderr
    assert label_arrays(store, "region") == label_arrays(work / "local.zarr", "region")


@pytest.mark.parametrize(
    "spec, words",
    [
        (ClusterOptions(workers=2, scheduler="tcp://x:1"), "contradict"),
        (ClusterOptions(cluster="pbs"), "not one of"),
        (ClusterOptions(workers=-1), "workers=-1"),
        (ClusterOptions(scheduler="tcp://127.0.0.1:9"), "no Dask scheduler answers"),
    ],
)
def test_bad_cluster_choices_are_one_line_errors(spec, words):
    with pytest.raises(UserError, match=words), connect(spec):
        pass


def test_tasks_keep_every_worker_busy_to_the_end():
    assert task_batches(1, 2) == 1
    assert task_batches(100, 2) == 8  # capped: long enough to overlap reading, short enough to balance
    assert task_batches(20, 2) == 2


def test_batch_size_auto_on_the_cpu_and_bad_values(work):
    from sebre_ij.checkpoint import load_checkpoint
    from sebre_ij.infer import auto_batch_size

    work, _ = work
    model, card = load_checkpoint(work / "m.safetensors", "cpu")
    assert auto_batch_size(model, card, torch.device("cpu")) == 4
    before = sorted((work / "slide.zarr").rglob("*"))
    run = subprocess.run(
        [*SEBRE, "segment", str(work / "slide.zarr"), "--model", str(work / "m.safetensors"), "--batch-size", "0"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 2 and "--batch-size '0'" in run.stderr
    assert sorted((work / "slide.zarr").rglob("*")) == before


def test_slurm_job_script_asks_for_the_queue_cores_memory_and_gpus():
    from sebre_ij.cluster import slurm_cluster

    spec = ClusterOptions(cluster="slurm", queue="gpu", cores=8, memory="32GB", gpus=2, jobs=3, walltime="02:00:00")
    with slurm_cluster(spec) as cluster:
        script = cluster.job_script()
    for line in [
        "#SBATCH -p gpu",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --mem=30G",
        "#SBATCH -t 02:00:00",
        "#SBATCH --gres=gpu:2",
    ]:
        assert line in script, script
    assert "--nthreads 8" in script and "--nworkers" not in script  # one worker per job


def test_a_worker_killed_mid_run_leaves_the_labels_of_the_in_process_run(work, tmp_path):
    """One of two workers is killed (SIGKILL) once the run has saved progress: Dask runs its tasks
    again on the other (and on the one its nanny starts anew), the chunk locks it held do not
    stall the run, and the labels equal the in-process run's."""
    import signal
    import threading
    import time

    work, local = work
    store = tmp_path / "slide.zarr"
    shutil.copytree(work / "slide.zarr", store)
    killed = []
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        pids = [w.process.pid for w in cluster.workers.values()]

        def kill_when_under_way():
            attrs = store / "labels" / "region" / ".zattrs"
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                done = (
                    json.loads(attrs.read_text()).get("sebre", {}).get("progress", {}).get("done", {})
                    if attrs.exists()
                    else {}
                )
                if done.get("0", 0) > 0:
                    os.kill(pids[0], signal.SIGKILL)
                    killed.append(done["0"])
                    return
                time.sleep(0.01)

        watcher = threading.Thread(target=kill_when_under_way)
        watcher.start()
        options = SegmentOptions(labels="region", min_score=0.0, batch_size=2, progress=False)
        result = segment(
            store, work / "m.safetensors", options, cluster=ClusterOptions(scheduler=cluster.scheduler_address)
        )
        watcher.join()
    assert killed and killed[0] < -(-local["region"].tiles // 2), "the worker was not killed mid-run"
    assert result.tiles == local["region"].tiles
    assert label_arrays(store, "region") == label_arrays(work / "local.zarr", "region")
    assert result.regions == local["region"].regions
