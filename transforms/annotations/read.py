"""``ReadCocoAnnotations``: stream COCO annotation files into keyed records, in parallel.

Each (file, section) pair is its own element, so a 450 MB instances file is parsed as several
streams at once (images, annotations, categories) and several files in parallel, each with
memory bounded by one batch of records. Records leave in batches, one per join bucket and
flush, so the join's shuffle moves thousands of elements rather than one per record. Files are
opened through Beam's filesystems, so local paths and ``gs://`` URLs work alike.
"""

from __future__ import annotations

import hashlib
import json

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

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
from coco_beam.transforms.annotations import coco_json
from coco_beam.transforms.images.masks import pack_polygons
from coco_beam.transforms.runtime.packing import pack, relax_gc
from coco_beam.transforms.shards.sharding import join_bucket

__all__ = ["ReadCocoAnnotations", "sections_of"]

CATEGORIES = "categories"
ANNOTATION_IDS = "annotation_ids"
IMAGE_COUNTS = "image_counts"

# The families list the same images; each split's image list is read from one of them, in
# this order of preference.
_IMAGES_FROM = ("instances", "person_keypoints", "captions", "image_info", "panoptic")

_SECTIONS = {
    "instances": ("images", "annotations", "categories"),
    "person_keypoints": ("images", "annotations", "categories"),
    "captions": ("images", "annotations"),
    "image_info": ("images", "categories"),
    "panoptic": ("images", "annotations", "categories"),
}


def sections_of(source: AnnotationSource) -> tuple[str, ...]:
    return _SECTIONS[source.family]


def plan_tasks(sources: list[AnnotationSource]) -> list[tuple[AnnotationSource, str]]:
    """``(source, section)`` pairs to stream: every section of every file, except that each
    split's ``images`` list is read from one file only."""
    images_from = {}
    for source in sorted(sources, key=lambda s: (_IMAGES_FROM.index(s.family), s.path)):
        images_from.setdefault(source.split, source)
    return [
        (source, section)
        for source in sources
        for section in sections_of(source)
        if section != "images" or images_from[source.split] is source
    ]


# Relative cost of streaming one section, per byte of its file: the annotations list is most of
# a file; the categories at its end are reached by a parse that builds nothing; the images list
# comes first and its reader stops at its end (measured on COCO-shaped files).
_SECTION_COST = {"annotations": 1.0, "categories": 0.3, "images": 0.15}


def task_cost(task: tuple[AnnotationSource, str]) -> float:
    source, section = task
    return _SECTION_COST[section] * max(source.size_bytes, 1)


def deal_tasks(tasks: list, workers: int) -> list:
    """Orders ``tasks`` so that dealt round-robin to ``workers`` (as Beam's local runner deals
    grouped keys to its workers) each gets about the same work: largest first, each to the
    least loaded worker, with ``None`` filling a worker's missing turns. Other runners balance
    work themselves; there the order is harmless."""
    if workers <= 1:
        return list(tasks)
    hands: list[list] = [[] for _ in range(workers)]
    loads = [0.0] * workers
    for task in sorted(tasks, key=task_cost, reverse=True):
        w = loads.index(min(loads))
        hands[w].append(task)
        loads[w] += task_cost(task)
    turns = max(len(hand) for hand in hands)
    return [hand[t] if t < len(hand) else None for t in range(turns) for hand in hands]


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


class _ReadSectionFn(beam.DoFn):
    """Streams one section of one file; every record is emitted, rejected or counted.

    ``keypoints_only`` names the splits that also have an instances file: their keypoint
    records keep only ids and keypoints, since their geometry repeats the instance's.
    """

    def __init__(self, keypoints_only: frozenset = frozenset()):
        self._keypoints_only = keypoints_only

    def setup(self):
        relax_gc()

    def process(self, task):
        source, section = task
        slim = source.family == "person_keypoints" and source.split in self._keypoints_only
        kind = {"images": TAG_IMAGE, "categories": "category"}.get(section)
        if kind is None:
            kind = {"captions": TAG_CAPTION, "panoptic": TAG_PANOPTIC}.get(
                source.family, TAG_ANNOTATION
            )
        ids, images = [], 0
        batches = _Batches(source.split)
        with FileSystems.open(source.path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            records = coco_json.iter_section(f, section)
            while True:
                try:
                    record = next(records)
                except StopIteration:
                    break
                except Exception as exc:
                    # Only the parser runs inside this try: nothing is yielded in it, so an
                    # exception of a fused downstream step is never caught here.
                    raise CocoFileError(
                        f"{source.path}: not a readable COCO JSON document in section "
                        f"'{section}': {type(exc).__name__}: {exc}"
                    ) from exc
                try:
                    if isinstance(record, coco_json.Flagged):
                        flagged, record = record, record.record
                        raise RecordError(flagged.reason, flagged.message)
                    checked = _check(kind, record, source.family, slim)
                except RecordError as exc:
                    yield beam.pvalue.TaggedOutput(
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
                        yield beam.pvalue.TaggedOutput(COUNTS, (("read", kind), 1))
                    continue
                if kind == "category":
                    yield beam.pvalue.TaggedOutput(CATEGORIES, (source.split, checked))
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
                yield from batches.add(image_id, (kind, source.family, source.path, checked))
        if section == "images":
            # Every split's bucket 0 exists, so the steps after the join can act once a split.
            batches.touch(0)
        yield from batches.flush()
        if ids:
            yield beam.pvalue.TaggedOutput(
                ANNOTATION_IDS, ((source.split, source.family), np.asarray(ids, np.int64))
            )
        if section == "images":
            yield beam.pvalue.TaggedOutput(IMAGE_COUNTS, (source.split, images))


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


def _check(kind: str, record, family: str, slim: bool) -> dict:
    if kind == TAG_IMAGE:
        return coco_json.check_image(record)
    if kind == TAG_CAPTION:
        return coco_json.check_caption(record)
    if kind == TAG_PANOPTIC:
        return coco_json.check_panoptic(record)
    if kind == TAG_ANNOTATION:
        if slim:
            return coco_json.check_keypoints_only(record)
        return coco_json.check_annotation(record, family)
    return coco_json.check_category(record)


def _merge_categories(split, records):
    """One ``{id: category}`` per split; a keypoints file adds joint names to its category,
    a panoptic file whether it is a thing or stuff."""
    merged: dict[int, dict] = {}
    for cat in sorted(
        records, key=lambda c: (c["id"], c["keypoints"] is not None, c["isthing"] is not None)
    ):
        current = merged.setdefault(cat["id"], dict(cat))
        if cat["keypoints"] and not current.get("keypoints"):
            current["keypoints"] = cat["keypoints"]
        if cat["isthing"] is not None and current.get("isthing") is None:
            current["isthing"] = cat["isthing"]
    return split, merged


def _splits_with_instances(sources: list[AnnotationSource]) -> frozenset:
    return frozenset(s.split for s in sources if s.family == "instances")


class ReadCocoAnnotations(beam.PTransform):
    """Reads COCO annotation files into batches of records keyed by their image's join bucket.

    Takes a pipeline root and a list of ``AnnotationSource`` (and ``workers``, the local
    runner's worker count, to deal the sections evenly; see ``deal_tasks``). Returns a dict of
    PCollections:
    ``records`` (``((split, bucket), packed [(image_id, (tag, family, source, record)), ...])``,
    see ``shards.sharding.join_bucket`` and ``runtime.packing.pack``; bucket 0 of every
    split is present, maybe empty),
    ``categories``
    (``(split, {id: category})``), ``rejected`` (records failing their schema check, with a
    reason), ``counts``, ``annotation_ids`` (one id array per section read, to find ids
    used twice without shuffling one element per annotation) and ``image_counts``
    (``(split, valid image records)``, known before any join, to size the shards). A file
    that is not JSON fails the run with a message naming it.
    """

    def __init__(self, sources: list[AnnotationSource], workers: int = 1):
        super().__init__()
        self._sources = list(sources)
        self._workers = workers

    def expand(self, pbegin):
        dealt = deal_tasks(plan_tasks(self._sources), self._workers)
        outputs = (
            pbegin
            | "ListSections" >> beam.Create(list(enumerate(dealt)), reshuffle=False)
            | "SpreadSections" >> beam.GroupByKey()
            | "Tasks" >> beam.FlatMap(lambda kv: [t for t in kv[1] if t is not None])
            | "StreamSection"
            >> beam.ParDo(_ReadSectionFn(_splits_with_instances(self._sources))).with_outputs(
                REJECTED, CATEGORIES, COUNTS, ANNOTATION_IDS, IMAGE_COUNTS, main="records"
            )
        )
        categories = (
            outputs[CATEGORIES]
            | "GroupCategories" >> beam.GroupByKey()
            | "MergeCategories" >> beam.MapTuple(_merge_categories)
        )
        return {
            "records": outputs.records,
            "categories": categories,
            "rejected": outputs[REJECTED],
            "counts": outputs[COUNTS],
            "annotation_ids": outputs[ANNOTATION_IDS],
            "image_counts": outputs[IMAGE_COUNTS],
        }
