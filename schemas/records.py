"""Element types that flow between the transforms, and the rejection reason catalogue.

Elements are small: ids, paths, annotations and masks. Image bytes never appear in any of
these types, because image bytes never cross a shuffle (they are read in the stage that
writes them).
"""

from __future__ import annotations

import dataclasses
import re

__all__ = [
    "COUNTS",
    "FAMILIES",
    "KINDS",
    "REJECTED",
    "AnnotationSource",
    "ImagePlan",
    "PlanBatch",
    "Reason",
    "Rejection",
    "ShardFile",
    "ShardResult",
    "TAG_ANNOTATION",
    "TAG_CAPTION",
    "TAG_IMAGE",
    "TAG_PANOPTIC",
    "parse_annotation_file_name",
]

# Annotation families COCO ships, by the prefix of their file names.
FAMILIES = ("instances", "person_keypoints", "captions", "image_info", "panoptic")

# Record kinds that conservation (read == written + rejected) is counted for; a panoptic
# record is one image's entry of a panoptic file (its PNG and segments_info).
KINDS = ("image", "annotation", "caption", "panoptic")
# The same kinds as the tags of the records the reader emits and the join groups.
TAG_IMAGE, TAG_ANNOTATION, TAG_CAPTION, TAG_PANOPTIC = KINDS

# Tags of the side outputs every transform shares: records not written, with their reason,
# and ``((counter, key), n)`` counts summed for the manifest.
REJECTED = "rejected"
COUNTS = "counts"

_SPLIT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# A file may be gzipped (``instances_val2017.json.gz``): the reader decompresses as it streams.
_FILE_RE = re.compile(
    r"^(instances|person_keypoints|captions|image_info|panoptic)_(.+)\.json(?:\.gz)?$"
)


class Reason:
    """Reason codes of the rejected output (the catalogue of ``docs/bad-inputs``)."""

    SCHEMA_VIOLATION = "schema_violation"
    UNSAFE_PATH = "unsafe_path"
    DUPLICATE_IMAGE_ID = "duplicate_image_id"
    DUPLICATE_ANNOTATION_ID = "duplicate_annotation_id"
    ORPHAN_ANNOTATION = "orphan_annotation"
    UNKNOWN_CATEGORY = "unknown_category"
    NON_FINITE_VALUE = "non_finite_value"
    DUPLICATE_KEY = "duplicate_key"
    INVALID_BBOX = "invalid_bbox"
    DEGENERATE_POLYGON = "degenerate_polygon"
    ODD_POLYGON_LENGTH = "odd_polygon_length"
    INVALID_RLE = "invalid_rle"
    INVALID_KEYPOINTS = "invalid_keypoints"
    INVALID_UNICODE = "invalid_unicode"
    IMAGE_MISSING = "image_missing"
    IMAGE_CORRUPT = "image_corrupt"
    IMAGE_TRUNCATED = "image_truncated"
    IMAGE_TOO_LARGE = "image_too_large"
    FORMAT_NOT_ALLOWED = "format_not_allowed"
    UNSUPPORTED_MODE = "unsupported_mode"
    DIMS_MISMATCH = "dims_mismatch"
    # The decoder killed the process decoding it (not with ``--no-isolate-decoders``).
    DECODER_CRASH = "decoder_crash"
    # An annotation or caption whose image was rejected goes with it, so nothing is
    # written for an image that is not in the output.
    IMAGE_REJECTED = "image_rejected"
    # Panoptic: segment ids in the PNG unlike segments_info, a PNG of another size or not a
    # readable RGB PNG; two panoptic records for one image (all copies).
    PANOPTIC_MISMATCH = "panoptic_mismatch"
    DUPLICATE_PANOPTIC_ANNOTATION = "duplicate_panoptic_annotation"


@dataclasses.dataclass(frozen=True)
class AnnotationSource:
    """One annotation JSON file: where it is, its family and the split it describes."""

    path: str
    family: str
    split: str
    images_dir: str
    size_bytes: int = 0  # as listed; only the reader's work estimates use it
    masks_dir: str = ""  # panoptic: the folder of the PNGs its records name

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"unknown annotation family {self.family!r} for {self.path}")
        if not _SPLIT_RE.match(self.split):
            raise ValueError(
                f"split name {self.split!r} (from {self.path}) must match {_SPLIT_RE.pattern}"
            )


def parse_annotation_file_name(name: str) -> tuple[str, str]:
    """``instances_val2017.json`` (or ``.json.gz``) -> ``("instances", "val2017")``.

    A name outside COCO's convention is taken as an instances file whose split is its stem
    (``train.json`` -> ``("instances", "train")``), as exports of other tools are named.
    """
    base = name.rsplit("/", 1)[-1]
    match = _FILE_RE.match(base)
    if match:
        return match.group(1), match.group(2)
    stem = base.removesuffix(".gz")
    stem = stem[:-5] if stem.endswith(".json") else base
    return "instances", stem


@dataclasses.dataclass(frozen=True, kw_only=True)
class Rejection:
    """A record that is not in the output, and why. Never carries image bytes or documents."""

    kind: str  # image, annotation, caption, file
    key: str  # the image or annotation id, or the file
    reason: str  # a Reason code
    error_type: str
    message: str
    source: str  # the annotation file (or image file) it came from
    split: str = ""
    payload_sha256: str = ""

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class ImagePlan:
    """Everything about one image except its bytes: what the shard writer needs.

    ``annotations`` hold dicts with the fields of ``schemas.parquet.ANNOTATION`` plus, before
    ``RasterizeMasks``, the raw ``segmentation``.
    """

    split: str
    image_id: int
    file_name: str
    width: int
    height: int
    path: str
    source: str
    annotations: list
    captions: list
    flags: list
    # The image's panoptic record: ``file_name``, ``path`` of the PNG, ``source``, and
    # ``segments`` (``id``, ``category_id``, ``iscrowd``, ``bbox``, ``area``); None without one.
    panoptic: dict | None = None
    # Annotation id -> its polygon rings as the JSON has them, kept by the shard writer before it
    # rasterizes them, only for YOLO ``segment`` labels; part of no row and no fingerprint.
    polygons: dict | None = None


@dataclasses.dataclass
class PlanBatch:
    """The plans of one join bucket, in image id order: plans travel between steps in these
    batches rather than one element per image. ``bucket`` 0 of every split is always present
    (possibly empty), so a step can act once per split."""

    split: str
    bucket: int
    plans: list


@dataclasses.dataclass(frozen=True)
class ShardFile:
    """One file of a shard, in one format, under its temporary name until the run is published."""

    format: str  # parquet, tfrecord
    temp_path: str
    num_bytes: int
    sha256: str


@dataclasses.dataclass(frozen=True)
class ShardResult:
    """What a shard writer wrote: the same rows in every format asked for (none when only
    statistics are computed)."""

    split: str
    index: int
    num_shards: int
    files: tuple  # ShardFile per format, in the order of the formats asked for
    num_rows: int
    written: dict  # kind -> records written
    files_found: int  # images whose file exists (written, or rejected for their content)
    attempt: str  # unique per execution of the shard: a retried bundle writes another
    state: str | None = None  # temporary path of the shard's state file (``schemas.state``)
    fingerprint: str = ""  # ``transforms.runs.incremental.shard_fingerprint``
    reused: bool = False  # its files are the previous run's, linked or copied, not rewritten

    @property
    def num_bytes(self) -> int:
        return sum(f.num_bytes for f in self.files)
