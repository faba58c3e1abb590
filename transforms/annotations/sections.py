"""Pure core: one section of one COCO annotation file read into the reader's outputs.

``read_section`` streams a section (``json_stream.iter_section``), checks every record
(``checks``) and gives back, in order, ``(tag, value)`` pairs: ``(None, ((split, bucket),
packed records))`` for the join, and the tagged outputs of ``ReadCocoAnnotations``
(``rejected``, ``counts``, ``categories``, ``annotation_ids``, ``image_counts``). Nothing
here imports Beam, so a decoder child can run it on a local file (``read_local_section``) and
hand the pairs back one at a time while another child reads another section: the reader's
sections are parsed on every core.

Guarantees: every record is emitted, rejected with a reason or counted; memory is bounded by
one batch of records (``_Batches``); a file that is not a readable COCO document raises
``CocoFileError`` naming it and the section.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
from collections.abc import Iterator

import numpy as np

from coco_beam.schemas.errors import RecordError
from coco_beam.schemas.records import (
    COUNTS,
    REJECTED,
    TAG_ANNOTATION,
    TAG_CAPTION,
    TAG_IMAGE,
    TAG_PANOPTIC,
    AnnotationSource,
    Rejection,
)
from coco_beam.transforms.annotations import checks
from coco_beam.transforms.annotations.json_stream import Flagged, iter_section
from coco_beam.transforms.images.masks import pack_polygons
from coco_beam.transforms.runtime.packing import pack, relax_gc
from coco_beam.transforms.shards.sharding import join_bucket

__all__ = [
    "ANNOTATION_IDS",
    "CATEGORIES",
    "IMAGE_COUNTS",
    "LOCAL_COMPRESSIONS",
    "CocoFileError",
    "read_local_section",
    "read_section",
]

CATEGORIES = "categories"
ANNOTATION_IDS = "annotation_ids"
IMAGE_COUNTS = "image_counts"

# How ``read_local_section`` opens a file, by the compression Beam finds from its name.
LOCAL_COMPRESSIONS = {"uncompressed": open, "gzip": gzip.open, "bzip2": bz2.open}


class CocoFileError(ValueError):
    """A whole annotation file cannot be read (not JSON, not COCO); the run stops."""


def _record_key(record) -> str:
    """The record's id; a panoptic record has none and is keyed by its image's."""
    if isinstance(record, dict):
        for field in ("id", "image_id"):
            if field in record:
                return str(record[field])[:64]
    return ""


def _sha256_of(record) -> str:
    try:
        payload = json.dumps(record, sort_keys=True, default=str).encode("utf-8", "replace")
    except (TypeError, ValueError):
        payload = repr(record).encode("utf-8", "replace")
    return hashlib.sha256(payload).hexdigest()


def _check(kind: str, record, family: str, slim: bool) -> dict:
    if kind == TAG_IMAGE:
        return checks.check_image(record)
    if kind == TAG_CAPTION:
        return checks.check_caption(record)
    if kind == TAG_PANOPTIC:
        return checks.check_panoptic(record)
    if kind == TAG_ANNOTATION:
        if slim:
            return checks.check_keypoints_only(record)
        return checks.check_annotation(record, family)
    return checks.check_category(record)


class _Batches:
    """Buffers one split's records by join bucket; flushes every bucket once ``limit`` records
    are held, so memory stays bounded and records cross the shuffle in packed batches."""

    def __init__(self, split: str, limit: int = 16384):
        self._split, self._limit = split, limit
        self._buckets: dict[int, list] = {}
        self._held = 0

    def add(self, image_id: int, value):
        self._buckets.setdefault(join_bucket(self._split, image_id), []).append((image_id, value))
        self._held += 1
        if self._held >= self._limit:
            yield from self.flush()

    def touch(self, bucket: int) -> None:
        self._buckets.setdefault(bucket, [])

    def flush(self):
        for bucket in sorted(self._buckets):
            yield (self._split, bucket), pack(self._buckets[bucket])
        self._buckets, self._held = {}, 0


def _kind(source: AnnotationSource, section: str) -> str:
    kind = {"images": TAG_IMAGE, "categories": "category"}.get(section)
    if kind is None:
        kind = {"captions": TAG_CAPTION, "panoptic": TAG_PANOPTIC}.get(
            source.family, TAG_ANNOTATION
        )
    return kind


def read_section(
    stream, source: AnnotationSource, section: str, *, slim: bool = False
) -> Iterator[tuple]:
    """``(tag, value)`` for every output of one section of ``source`` read from ``stream``
    (seekable to its start); tag None is the records. ``slim``: keypoint records keep only
    ids and keypoints (their instance comes from the split's instances file)."""
    kind = _kind(source, section)
    ids, images = [], 0
    batches = _Batches(source.split)
    records = iter_section(stream, section)
    while True:
        try:
            record = next(records)
        except StopIteration:
            break
        except Exception as exc:
            # Only the parser runs inside this try: nothing is yielded in it, so an exception
            # of a consumer is never caught here.
            raise CocoFileError(
                f"{source.path}: not a readable COCO JSON document in section "
                f"'{section}': {type(exc).__name__}: {exc}"
            ) from exc
        try:
            if isinstance(record, Flagged):
                flagged, record = record, record.record
                raise RecordError(flagged.reason, flagged.message)
            checked = _check(kind, record, source.family, slim)
        except RecordError as exc:
            yield (
                REJECTED,
                Rejection(
                    kind=kind,
                    key=_record_key(record),
                    reason=exc.reason,
                    error_type=type(exc).__name__,
                    message=str(exc)[:200],
                    source=source.path,
                    split=source.split,
                    payload_sha256=_sha256_of(record),
                ),
            )
            if kind in (TAG_IMAGE, TAG_ANNOTATION, TAG_CAPTION, TAG_PANOPTIC):
                yield COUNTS, (("read", kind), 1)
            continue
        if kind == "category":
            yield CATEGORIES, (source.split, checked)
            continue
        if kind == TAG_IMAGE:
            image_id = checked["id"]
            images += 1
        elif kind == TAG_PANOPTIC:
            image_id = checked["image_id"]
            checked["path"] = source.masks_dir.rstrip("/") + "/" + checked["file_name"]
        else:
            image_id = checked["image_id"]
            ids.append(checked["id"])
        if "segmentation" in checked:
            checked["segmentation"] = pack_polygons(checked["segmentation"])
        for batch in batches.add(image_id, (kind, source.family, source.path, checked)):
            yield None, batch
    if section == "images":
        # Every split's bucket 0 exists, so the steps after the join can act once a split.
        batches.touch(0)
    for batch in batches.flush():
        yield None, batch
    if ids:
        yield ANNOTATION_IDS, ((source.split, source.family), np.asarray(ids, np.int64))
    if section == "images":
        yield IMAGE_COUNTS, (source.split, images)


def read_local_section(
    source: AnnotationSource, section: str, *, slim: bool = False, compression: str
) -> Iterator[tuple]:
    """``read_section`` of a file on the local disk, opened here (``compression``: a key of
    ``LOCAL_COMPRESSIONS``): what a child runs, without Beam's filesystems."""
    relax_gc()
    with LOCAL_COMPRESSIONS[compression](source.path, "rb") as stream:
        yield from read_section(stream, source, section, slim=slim)
