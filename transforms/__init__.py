"""Reusable PTransforms of coco-beam, each a thin Beam skin over a pure, unit-tested core,
grouped by the pipeline's stages:

    annotations/  reading and joining         ReadCocoAnnotations, JoinAnnotationsToImages
    images/       images and masks            RasterizeMasks
    shards/       writing, a module a format  AssignShards, WriteShards
    stats/        statistics, tables, report  GatherStatistics
    runs/         publishing, state, lake     PublishRun
    runtime/      packing, progress, isolated decoders
"""
