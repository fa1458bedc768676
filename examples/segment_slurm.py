"""Segment a slide on a SLURM cluster through dask-jobqueue (run it on a login node).

    python examples/segment_slurm.py /shared/slides/brain01.zarr /shared/models/model.safetensors \
        --queue gpu --cores 8 --memory 32GB --gpus 1 --jobs 4

The same as `sebre segment SLIDE --model MODEL --cluster slurm --queue gpu ...`. Each job is one
Dask worker; the slide and the model must lie on a file system the compute nodes share.
"""

import argparse

from sebre_ij.cluster import ClusterSpec
from sebre_ij.segment import segment

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("slide")
parser.add_argument("model")
parser.add_argument("--queue", default=None, help="SLURM partition")
parser.add_argument("--cores", type=int, default=8)
parser.add_argument("--memory", default="32GB")
parser.add_argument("--gpus", type=int, default=1)
parser.add_argument("--jobs", type=int, default=4)
parser.add_argument("--walltime", default="02:00:00")
args = parser.parse_args()

spec = ClusterSpec(
    cluster="slurm",
    queue=args.queue,
    cores=args.cores,
    memory=args.memory,
    gpus=args.gpus,
    jobs=args.jobs,
    walltime=args.walltime,
)
result = segment(
    args.slide,
    args.model,
    labels="sebre",
    rois=f"{args.slide.rstrip('/')}-RoiSet.zip",
    batch_size="auto" if args.gpus else 4,
    cluster=spec,
)
print(f"{result.tiles} tiles, {len(result.regions)} regions in {result.seconds:.0f} s")
