"""Where `segment` runs: in this process, or on Dask distributed (a LocalCluster, a scheduler the
user already runs, or SLURM through dask-jobqueue).

On a cluster the tiles of every plane are cut into tasks of whole batches (the same batches as in
one process, so the labels are the same). Each worker loads the model once, runs its tasks'
batches and writes their tile cores straight into the store, holding a cluster-wide lock on the
chunks a core shares with its neighbours. The client merges the batches' region statistics in
batch order and saves progress as the longest finished prefix, so a killed run resumes as an
in-process one does.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import dask
import torch

from .atlas_prior import AtlasPrior
from .checkpoint import load_checkpoint
from .errors import Stopped, UserError
from .infer import predict_tiles, tile_reader
from .layer import reopen_layer
from .model import pick_device
from .model_input import InputMap
from .pixels import ChunkCache
from .slide import open_slide
from .stitch import ChunkWriter, RegionStats, TileRun

log = logging.getLogger(__name__)

CLUSTERS = ("slurm",)
# What a LocalCluster's worker processes start with: one OpenMP/BLAS thread each (torch's threads
# are set per task), given to the workers rather than set in this process's environment.
WORKER_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


@dataclass(frozen=True)
class ClusterOptions:
    """Where `segment` runs: `workers` local processes, a `scheduler` address, or a job-queue
    `cluster` ("slurm": `jobs` jobs of `cores`, `memory`, `gpus` each, on `queue`, for `walltime`);
    none of them: in this process. `threads`: torch threads per task (0: the host's cores shared
    among its tasks)."""

    workers: int = 0
    scheduler: str | None = None
    cluster: str | None = None
    queue: str | None = None
    cores: int = 4
    memory: str = "16GB"
    gpus: int = 0
    jobs: int = 1
    walltime: str = "01:00:00"
    threads: int = 0  # torch threads per task; 0: the host's cores shared among its tasks

    @property
    def distributed(self) -> bool:
        return bool(self.workers or self.scheduler or self.cluster)

    def check(self) -> None:
        chosen = [
            f"{name}={value!r}"
            for name, value in (("workers", self.workers), ("scheduler", self.scheduler), ("cluster", self.cluster))
            if value
        ]
        if len(chosen) > 1:
            raise UserError(f"{' and '.join(chosen)} contradict each other; pass one way of running")
        if self.workers < 0:
            raise UserError(f"workers={self.workers}: give a number of worker processes, 1 or more")
        if self.cluster and self.cluster not in CLUSTERS:
            raise UserError(
                f"cluster={self.cluster!r} is not one of {', '.join(CLUSTERS)}; use scheduler=ADDRESS for others"
            )
        if self.cluster and (self.jobs < 1 or self.cores < 1):
            raise UserError("jobs= and cores= must be 1 or more")


def slurm_cluster(spec: ClusterOptions):
    """A dask-jobqueue SLURMCluster for `spec`: one worker process per job, GPUs through --gres."""
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError as exc:
        raise UserError("cluster='slurm' needs dask-jobqueue; pip install dask-jobqueue") from exc
    extra = [f"--gres=gpu:{spec.gpus}"] if spec.gpus else []
    return SLURMCluster(
        queue=spec.queue,
        cores=spec.cores,
        processes=1,
        memory=spec.memory,
        walltime=spec.walltime,
        job_extra_directives=extra,
        scheduler_options={"dashboard_address": ":0"},
    )


def local_cluster(workers: int):
    """A LocalCluster of `workers` processes, one thread each. Their environment is passed to them;
    distributed's pre-spawn settings, which it would write into this process's environment for
    every later subprocess to inherit, are turned off. (distributed still marks the environment
    with PYTHONHASHSEED, when unset, and __DASK_PARENT_PID, for its workers to hash and name alike.)"""
    from distributed import LocalCluster

    with dask.config.set({"distributed.nanny.pre-spawn-environ": {}}):
        return LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0", env=WORKER_ENV
        )


@contextlib.contextmanager
def connect(spec: ClusterOptions) -> Iterator[object | None]:
    """A distributed Client for `spec` (None in process), its dashboard link logged; the cluster
    it started is closed on the way out. distributed is imported only here: once loaded, Dask's
    default scheduler becomes the client's."""
    spec.check()
    if not spec.distributed:
        yield None
        return
    from distributed import Client

    with contextlib.ExitStack() as stack:
        if spec.scheduler:
            try:
                client = stack.enter_context(Client(spec.scheduler, timeout="10s"))
            except (OSError, TimeoutError) as exc:
                raise UserError(
                    f"scheduler={spec.scheduler!r}: no Dask scheduler answers there ({exc}); check the address "
                    "(tcp://HOST:8786) and that the scheduler runs"
                ) from exc
        else:
            if spec.workers:
                cluster = local_cluster(spec.workers)
            else:
                cluster = slurm_cluster(spec)
                cluster.scale(jobs=spec.jobs)
            stack.enter_context(cluster)
            client = stack.enter_context(Client(cluster))
        log.info("Dask dashboard: %s", client.dashboard_link)
        yield client


def torch_threads(client, fixed: int = 0) -> dict[str, int]:
    """Torch threads per task for each worker: its host's cores shared among the tasks that run
    there at once, so two workers on two cores run one thread each instead of fighting over four."""
    workers = client.scheduler_info(n_workers=-1)["workers"]
    per_host: dict[str, int] = {}
    for w in workers.values():
        per_host[w["host"]] = per_host.get(w["host"], 0) + w["nthreads"]
    cores = client.run(os.cpu_count)
    if fixed:
        return {address: fixed for address in workers}
    return {address: max(1, (cores.get(address) or 1) // per_host[w["host"]]) for address, w in workers.items()}


@dataclass(frozen=True, kw_only=True)
class TileJob:
    """Everything a worker needs for one plane's tasks, scattered to the workers once."""

    slide_url: str
    pixel_size: float | None
    model_path: str
    tile_size: int
    overlap: int
    device: str | None
    labels: str
    level: int
    factor: float
    view: InputMap  # how the plane's pixels become model input
    plane: object  # stitch.PlaneTiles: the plane's tiles, their sections and where their cores go
    batch_size: int
    min_score: float
    tta: bool
    instances: bool  # run the RPN and RoI heads (else the semantic branch alone gives the class maps)
    prior: AtlasPrior | None  # the atlas prior on the tiles' class maps
    threads: dict[str, int]


@functools.lru_cache(maxsize=2)
def _model(path: str, stamp: tuple, device: str | None, tile_size: int, overlap: int):
    """The model, loaded once per worker process (not per task); `stamp` reloads a changed file."""
    dev = pick_device(device)
    model, card = load_checkpoint(path, dev, tile_size, overlap)
    return model, card, dev


@contextlib.contextmanager
def chunk_lock(layer, window: tuple[slice, slice]) -> Iterator[None]:
    """A cluster-wide lock on the chunks under a window of the layer's level: two workers never
    read-modify-write one chunk at once.

    Each chunk is a one-lease `distributed.Semaphore`, taken in sorted order (so two tasks never
    wait on each other). A lease, unlike a Lock, is taken back by the scheduler when its holder
    stops refreshing it (distributed.scheduler.locks.lease-timeout), so a worker killed while
    writing delays the chunks it held instead of stalling the run."""
    from distributed import Semaphore

    names = sorted(f"sebre:{layer.slide.url}:{layer.name}:{r}.{c}" for r, c in layer.chunks_under(window))
    held = []
    try:
        for name in names:
            chunk = Semaphore(max_leases=1, name=name)
            chunk.acquire()
            held.append(chunk)
        yield
    finally:
        for chunk in reversed(held):
            chunk.release()


def run_task(job: TileJob, start: int, stop: int) -> list[dict]:
    """On a worker: run tiles [start, stop) of the job's plane and write them; return each batch's
    region stats. Chunks that other tasks' tiles also touch are merged under the cluster's lock."""
    from distributed import get_worker

    torch.set_num_threads(job.threads.get(get_worker().address, 1))
    stat = os.stat(job.model_path)
    model, card, dev = _model(job.model_path, (stat.st_mtime_ns, stat.st_size), job.device, job.tile_size, job.overlap)
    slide = open_slide(job.slide_url, job.pixel_size)
    layer = reopen_layer(slide, job.labels, job.level)
    read = tile_reader(ChunkCache(slide.pixels(job.level)), slide.axes, job.plane.z, job.view, job.factor)
    tiles = list(job.plane.tiles[start:stop])
    writer, results, out = ChunkWriter(layer, job.plane, start, stop, lock=chunk_lock), [], []
    predicted = predict_tiles(
        model,
        card,
        tiles,
        read,
        device=dev,
        batch_size=job.batch_size,
        min_score=job.min_score,
        flips=job.tta,
        instances=job.instances,
        prior=job.prior,
    )
    for i, result in enumerate(predicted, start=1):
        results.append(result)
        if i % job.batch_size == 0 or i == len(tiles):
            out.append(writer.put(results).to_dict())
            results = []
    writer.close()
    return out


def task_batches(n_batches: int, n_workers: int) -> int:
    """Batches per task: enough tasks for every worker to stay busy to the end (4 per worker),
    each long enough that reading the next batch overlaps the model's work."""
    return max(1, min(8, n_batches // max(1, 4 * n_workers)))


def run_tiles_on(
    client,
    spec: ClusterOptions,
    layer,
    job_of,
    planes: list,
    tiles_of,
    batch_size: int,
    bar=None,
    stop: threading.Event | None = None,
) -> TileRun:
    """On the client: submit every plane's unfinished batches as tasks, merge their region stats in
    batch order and save progress as the longest finished prefix. Once `stop` is set the tasks not
    yet finished are cancelled and `Stopped` is raised with the progress saved."""
    from distributed import as_completed

    stats = RegionStats.from_dict(layer.progress.get("stats", {}))
    threads = torch_threads(client, spec.threads)
    n_workers = max(1, len(threads))
    n_sections = 0
    tiled = [tiles_of(z, tissue.sections) for z, tissue in enumerate(planes)]
    total = sum(len(plane.tiles) for plane in tiled)
    for z, (tissue, plane) in enumerate(zip(planes, tiled)):
        n_sections = max(n_sections, tissue.sections.count)
        tiles = plane.tiles
        done = layer.done(z)
        first = done * batch_size
        todo = len(tiles) - first
        per_task = task_batches(-(-todo // batch_size), n_workers) * batch_size
        job = client.scatter(job_of(plane, tissue, threads), broadcast=True)
        futures = {
            client.submit(run_task, job, i, min(i + per_task, len(tiles)), pure=False): k
            for k, i in enumerate(range(first, len(tiles), per_task))
        }
        finished: dict[int, list[dict]] = {}
        task = bar.add_task("tiles", total=len(tiles), completed=done * batch_size, rate=0.0) if bar else None
        next_task, ran, start = 0, 0, time.perf_counter()
        for future in as_completed(futures):
            if stop is not None and stop.is_set():
                client.cancel(list(futures))
                done_tiles = sum(min(layer.done(p.z) * batch_size, len(p.tiles)) for p in tiled)
                raise Stopped(done_tiles, total)
            finished[futures[future]] = future.result()
            ran += min(per_task, todo - futures[future] * per_task)
            if bar:
                bar.update(task, completed=done * batch_size + ran, rate=ran / max(time.perf_counter() - start, 1e-9))
            while next_task in finished:  # merge in batch order: the same sums as in one process
                for batch in finished.pop(next_task):
                    stats.merge(RegionStats.from_dict(batch))
                    done += 1
                next_task += 1
                layer.save_progress(z, done, stats.to_dict())
    return TileRun(stats, total, n_sections)
