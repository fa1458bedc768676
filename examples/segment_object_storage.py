"""Segment a slide kept in object storage (S3, GCS, Azure, HTTP with write access) in place.

    pip install s3fs            # or gcsfs, adlfs: the fsspec driver for your store
    python examples/segment_object_storage.py s3://my-bucket/brain01.zarr model.safetensors --workers 4

The labels are written into the same store (labels/sebre/), by the workers straight from where
they run: give them credentials the usual way (AWS_PROFILE, AWS_ACCESS_KEY_ID, ..., or an IAM
role). The model path must be readable by every worker (copy it next to them, or use a shared
disk). Equivalent: `sebre segment s3://my-bucket/brain01.zarr --model model.safetensors --workers 4`.
"""

import argparse

from sebre_ij.cluster import ClusterSpec
from sebre_ij.segment import segment

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("url", help="fsspec URL of the OME-Zarr image, e.g. s3://bucket/slide.zarr")
parser.add_argument("model")
parser.add_argument("--workers", type=int, default=4, help="local worker processes (0: this process)")
parser.add_argument("--scheduler", default=None, help="or an existing scheduler's address")
args = parser.parse_args()

spec = ClusterSpec(workers=0 if args.scheduler else args.workers, scheduler=args.scheduler)
result = segment(args.url, args.model, labels="sebre", rois="RoiSet.zip", cluster=spec)
print(f"{args.url}: labels/sebre, {result.tiles} tiles, {len(result.regions)} regions")
