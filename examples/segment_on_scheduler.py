"""Segment a slide on a Dask cluster that already runs (any deployment: dask-gateway, Kubernetes,
`dask scheduler` + `dask worker` by hand).

    python examples/segment_on_scheduler.py tcp://head-node:8786 /shared/slides/brain01.zarr \
        /shared/models/model.safetensors

The same as `sebre segment SLIDE --model MODEL --scheduler tcp://head-node:8786`. The workers need
sebre-ij installed and must reach the slide and the model by the same paths or URLs.
"""

import sys

from sebre_ij.cluster import ClusterSpec
from sebre_ij.segment import segment

address, slide, model = sys.argv[1:4]
result = segment(slide, model, labels="sebre", measurements="measurements.csv", cluster=ClusterSpec(scheduler=address))
for region in result.regions:
    print(region["section"], region["name"], region["area_um2"])
