"""``ShardWriterConfig``: the settings of ``WriteShards``, small, picklable and validated at
construction, so a bad setting fails when the pipeline is built rather than on a worker."""

from __future__ import annotations

import dataclasses

from coco_beam.transforms.images.decode import DEFAULT_MAX_PIXELS
from coco_beam.transforms.runs.incremental import PreviousRun
from coco_beam.transforms.shards.formats import FORMATS
from coco_beam.transforms.shards.yolo import TASKS

__all__ = ["ShardWriterConfig"]


@dataclasses.dataclass(frozen=True)
class ShardWriterConfig:
    """Settings of the shard writer; validated at construction."""

    temp_dir: str
    # Hugging Face's readers expect row groups of up to ~100 MB; 64 MiB keeps a writer's
    # buffer small while still amortizing per-group overhead.
    row_group_bytes: int = 64 * 1024 * 1024
    # Threads reading and decoding ahead of each shard writer. Measured on 2 cores with one
    # worker per core, 20k images: 2 threads 45 s, 3 threads 40-43 s, 4 threads 44 s. A third
    # thread lets a worker that is left alone with the last shards still use both cores.
    io_threads: int = 3
    max_pixels: int = DEFAULT_MAX_PIXELS
    compression: str = "zstd"
    progress_dir: str | None = None
    # Files written per shard (names of ``formats.REGISTRY``); none computes statistics only
    # (``coco-beam stats``).
    formats: tuple = ("parquet",)
    # TFRecord: one PNG mask per instance in ``image/object/mask`` (off: they dominate the size).
    tfrecord_masks: bool = False
    # Parquet: each panoptic record's semantic label map (a PNG of category ids).
    panoptic_semantic: bool = False
    # YOLO: the label lines written (``shards.yolo.TASKS``: detect, segment or pose).
    yolo_task: str = "detect"
    # Off: no statistics are gathered (no pixel histograms, no accumulators, no digests).
    statistics: bool = True
    # Off (or statistics off): no perceptual hash per image, no near-duplicate search.
    near_duplicates: bool = True
    # The output's last complete run, when this run rebuilds incrementally.
    previous: PreviousRun | None = None
    # Decode in child processes, so a native crash rejects one image instead of the worker.
    isolate_decoders: bool = True
    # What the run's publishing step will need (``runtime.warmup.prepare``), imported in the
    # background while shards are written rather than at the end, after the last one.
    prepare: tuple[str, ...] = ()

    @property
    def keeps_polygons(self) -> bool:
        """Whether the writer keeps each plan's polygon rings (``ImagePlan.polygons``) before it
        rasterizes them: only YOLO ``segment`` labels are written from them."""
        return "yolo" in self.formats and self.yolo_task == "segment"

    def __post_init__(self):
        unknown = set(self.formats) - set(FORMATS)
        if unknown:
            raise ValueError(f"unknown output formats {sorted(unknown)}; known: {FORMATS}")
        if self.row_group_bytes < 1024 * 1024:
            raise ValueError("row_group_bytes must be at least 1 MiB")
        if not 1 <= self.io_threads <= 64:
            raise ValueError("io_threads must be between 1 and 64")
        if self.max_pixels < 1:
            raise ValueError("max_pixels must be positive")
        if self.yolo_task not in TASKS:
            raise ValueError(f"unknown YOLO task {self.yolo_task!r}; known: {TASKS}")
