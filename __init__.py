"""coco-beam: Apache Beam pipelines that turn COCO-format datasets into sharded training data
and dataset-wide statistics.

The public API, imported on first use (so that ``import coco_beam`` stays cheap for the
decoder child processes, which import only what they run)::

    import coco_beam

    result, plan = coco_beam.run(["--coco-root=coco", "--output=out"])   # one whole build

    # or the PTransforms, composed by hand (see coco_beam.pipelines.build):
    coco_beam.ReadCocoAnnotations, coco_beam.JoinAnnotationsToImages, coco_beam.RasterizeMasks,
    coco_beam.AssignShards, coco_beam.WriteShards, coco_beam.GatherStatistics,
    coco_beam.PublishRun

The code lives in three sub-packages: ``coco_beam.pipelines`` (composition, options, the
command line), ``coco_beam.transforms`` (the PTransforms, grouped by stage) and
``coco_beam.schemas`` (the data contracts).
"""

from __future__ import annotations

import importlib

__all__ = [
    "AssignShards",
    "BuildOptions",
    "GatherStatistics",
    "JoinAnnotationsToImages",
    "PublishRun",
    "RasterizeMasks",
    "ReadCocoAnnotations",
    "WriteShards",
    "run",
    "synthesize",
]

# Public name -> the module that defines it.
_PUBLIC = {
    "AssignShards": "coco_beam.transforms.shards.assign",
    "BuildOptions": "coco_beam.pipelines.options",
    "GatherStatistics": "coco_beam.transforms.stats.gather",
    "JoinAnnotationsToImages": "coco_beam.transforms.annotations.join",
    "PublishRun": "coco_beam.transforms.runs.publish",
    "RasterizeMasks": "coco_beam.transforms.images.rasterize",
    "ReadCocoAnnotations": "coco_beam.transforms.annotations.read",
    "WriteShards": "coco_beam.transforms.shards.write",
    "run": "coco_beam.pipelines.build",
    "synthesize": "coco_beam.pipelines.synth",
}


def __getattr__(name: str):
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'coco_beam' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
