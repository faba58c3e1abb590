"""Options of the build pipeline: a ``PipelineOptions`` subclass, so runners and templates see them.

Everything not listed here is a Beam pipeline option (``--runner``, ``--direct_num_workers``...).
Each option is also accepted with underscores (``--coco_root``), as Beam's own options are
spelled and as template launchers and schedulers pass parameters.
"""

from __future__ import annotations

import argparse

from apache_beam.options.pipeline_options import PipelineOptions

from coco_beam.transforms.images.decode import DEFAULT_MAX_PIXELS
from coco_beam.transforms.runs.lease import DEFAULT_LEASE_TIMEOUT
from coco_beam.transforms.runs.volume import DEFAULT_MAX_SHRINK
from coco_beam.transforms.shards.formats import FORMATS
from coco_beam.transforms.shards.sharding import DEFAULT_SHARD_BYTES
from coco_beam.transforms.shards.yolo import TASKS

__all__ = ["BuildOptions", "DEFAULT_MAX_REJECTED_FRACTION"]

# A few per cent: real COCO-format exports carry a handful of broken records, while a systemic
# bug (wrong image folder, wrong format) rejects far more.
DEFAULT_MAX_REJECTED_FRACTION = 0.05


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def _formats(text: str) -> list[str]:
    """``parquet`` or a comma-separated list; empty: statistics only."""
    formats = [f.strip() for f in text.split(",") if f.strip()]
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown formats {unknown}; known: {list(FORMATS)}")
    if len(set(formats)) != len(formats):
        raise argparse.ArgumentTypeError(f"a format is named twice in {text!r}")
    return formats


class BuildOptions(PipelineOptions):
    """Inputs, output and sharding of ``coco-beam build``."""

    @classmethod
    def _add_argparse_args(cls, parser):
        group = parser.add_argument_group("coco-beam build")
        group.add_argument(
            "--coco-root",
            "--coco_root",
            dest="coco_root",
            default=None,
            help="A COCO dataset in the official layout: ROOT/annotations/<family>_<split>.json "
            "(or .json.gz) and the images of each split in ROOT/<split>/; panoptic PNGs in "
            "ROOT/annotations/panoptic_<split>/ or ROOT/panoptic_<split>/. Local path or gs:// "
            "URL.",
        )
        group.add_argument(
            "--annotations",
            dest="annotations",
            nargs="+",
            default=None,
            help="Annotation files to read (instead of --coco-root); the split is taken from "
            "each file's name (instances_val2017.json: val2017; train.json: train).",
        )
        group.add_argument(
            "--images",
            dest="images",
            default=None,
            help="With --annotations: the folder holding the files the 'file_name's name.",
        )
        group.add_argument(
            "--output",
            dest="output",
            default=None,
            help="Output folder (local path or gs:// URL). Each run writes OUTPUT/runs/<id>/ "
            "and then points OUTPUT/LATEST at it.",
        )
        group.add_argument(
            "--formats",
            dest="formats",
            type=_formats,
            default=["parquet"],
            help=f"Comma-separated shard formats, of {', '.join(FORMATS)} (default parquet); "
            "several are written in one pass, with the same images in the same shards.",
        )
        group.add_argument(
            "--tfrecord-masks",
            "--tfrecord_masks",
            dest="tfrecord_masks",
            action="store_true",
            default=False,
            help="TFRecord: one PNG mask per instance in image/object/mask (off by default: "
            "masks dominate the size).",
        )
        group.add_argument(
            "--yolo-task",
            "--yolo_task",
            dest="yolo_task",
            choices=TASKS,
            default="detect",
            help="YOLO: the label lines written; detect (boxes, the default), segment (each "
            "instance's mask outline as a polygon) or pose (boxes and keypoints, kpt_shape in "
            "data.yaml).",
        )
        group.add_argument(
            "--panoptic-semantic",
            "--panoptic_semantic",
            dest="panoptic_semantic",
            action="store_true",
            default=False,
            help="Parquet: add each panoptic record's semantic label map (a PNG of category "
            "ids) as panoptic.semantic_png.",
        )
        group.add_argument(
            "--no-statistics",
            "--no_statistics",
            dest="statistics",
            action="store_false",
            default=True,
            help="Write shards only: no stats/ folder (saves the pixel count of every image).",
        )
        group.add_argument(
            "--no-near-duplicates",
            "--no_near_duplicates",
            dest="near_duplicates",
            action="store_false",
            default=True,
            help="Statistics without the near-duplicate search: no perceptual hash of each "
            "image (stats.json's near_duplicates is then null, and the report draws no "
            "pictures of duplicate groups).",
        )
        group.add_argument(
            "--no-isolate-decoders",
            "--no_isolate_decoders",
            dest="isolate_decoders",
            action="store_false",
            default=True,
            help="Decode images in the worker itself: about 8%% faster, but a decoder that"
            " crashes (a native fault) then kills the worker instead of rejecting that image as"
            " decoder_crash (the default).",
        )
        group.add_argument(
            "--full",
            dest="full",
            action="store_true",
            default=False,
            help="Rebuild everything, even where the output's last run could be reused "
            "(default: rebuild only the shards whose images or annotations changed).",
        )
        group.add_argument(
            "--iceberg-catalog",
            "--iceberg_catalog",
            dest="iceberg_catalog",
            default=None,
            help="The Iceberg catalog to register each run in, as a URI (sqlite:///...,"
            " postgresql://..., http(s):// for a REST catalog, thrift:// for Hive) or a pyiceberg"
            " catalog type (glue, bigquery) with --iceberg-property. Default for a local output"
            " with Parquet shards: a SQLite catalog in OUT/iceberg/; none for an object-store"
            " output or a TFRecord-only build.",
        )
        group.add_argument(
            "--iceberg-property",
            "--iceberg_property",
            dest="iceberg_properties",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="A property of the Iceberg catalog (warehouse, credentials...); repeatable.",
        )
        group.add_argument(
            "--iceberg-namespace",
            "--iceberg_namespace",
            dest="iceberg_namespace",
            default="coco_beam",
            help="The namespace of the tables (default coco_beam).",
        )
        group.add_argument(
            "--no-iceberg",
            "--no_iceberg",
            dest="iceberg",
            action="store_false",
            default=True,
            help="Register nothing in an Iceberg catalog.",
        )
        group.add_argument(
            "--num-shards",
            "--num_shards",
            dest="num_shards",
            type=_positive_int,
            default=None,
            help="Shards per split; by default one per --shard-bytes of images.",
        )
        group.add_argument(
            "--shard-bytes",
            "--shard_bytes",
            dest="shard_bytes",
            type=_positive_int,
            default=DEFAULT_SHARD_BYTES,
            help="Target shard size in bytes of images (default 256 MiB).",
        )
        group.add_argument(
            "--row-group-bytes",
            "--row_group_bytes",
            dest="row_group_bytes",
            type=_positive_int,
            default=64 * 1024 * 1024,
            help="Row group size bound in bytes (default 64 MiB).",
        )
        group.add_argument(
            "--io-threads",
            "--io_threads",
            dest="io_threads",
            type=_positive_int,
            default=3,
            help="Threads reading and decoding images ahead of each shard writer (default 3).",
        )
        group.add_argument(
            "--max-pixels",
            "--max_pixels",
            dest="max_pixels",
            type=_positive_int,
            default=DEFAULT_MAX_PIXELS,
            help="Images with more pixels are rejected as image_too_large (default 100M).",
        )
        group.add_argument(
            "--max-rejected-fraction",
            "--max_rejected_fraction",
            dest="max_rejected_fraction",
            type=_fraction,
            default=DEFAULT_MAX_REJECTED_FRACTION,
            help="Fail the run when more than this fraction of any record kind is rejected.",
        )
        group.add_argument(
            "--max-shrink",
            "--max_shrink",
            dest="max_shrink",
            type=_fraction,
            default=DEFAULT_MAX_SHRINK,
            help="Fail the run when, against the output's last run, a split disappears or its "
            f"written images fall by more than this fraction (default {DEFAULT_MAX_SHRINK}), "
            "or a category loses every instance; 1 allows anything.",
        )
        group.add_argument(
            "--keep-runs",
            "--keep_runs",
            dest="keep_runs",
            type=_positive_int,
            default=None,
            help="After publishing, delete the run folders older than the newest N complete "
            "runs, and the lake table's snapshots of the deleted runs (default: keep all).",
        )
        group.add_argument(
            "--lease-timeout",
            "--lease_timeout",
            dest="lease_timeout",
            type=_positive_int,
            default=DEFAULT_LEASE_TIMEOUT,
            help="Seconds after which the lease of a run that stopped renewing it (a killed "
            f"run) is taken over by the next (default {DEFAULT_LEASE_TIMEOUT}). One run at a "
            "time writes an output: the others fail at once naming the holder.",
        )
        group.add_argument(
            "--progress-dir", dest="progress_dir", default=None, help=argparse.SUPPRESS
        )
