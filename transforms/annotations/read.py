"""``ReadCocoAnnotations``: stream COCO annotation files into keyed records, in parallel.

Each (file, section) pair is its own element, so a 450 MB instances file is parsed as several
streams at once (images, annotations, categories) and several files in parallel, each with
memory bounded by one batch of records. Records leave in batches, one per join bucket and
flush, so the join's shuffle moves thousands of elements rather than one per record. Files are
opened through Beam's filesystems, so local paths and ``gs://`` URLs work alike, and a
``.json.gz`` file is decompressed as it is streamed.

Where the sections run: the reading itself (``sections.read_section``) is a pure core. With
one worker (the default local run, and any runner that spreads elements itself) the sections
of one file travel as one element, and a local file's are read at once, each in a child
process of the worker (``runtime.isolation``): even one worker parses on every core, and the
categories at a file's end (reached by a parse that builds nothing) cost no time beside its
annotations. Files still spread over workers. Other files are read in the worker.
"""

from __future__ import annotations

import queue
import threading

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.typehints import Iterable, Tuple, Union
from apache_beam.utils.shared import Shared

from coco_beam.schemas.records import COUNTS, REJECTED, AnnotationSource, Rejection
from coco_beam.transforms.annotations.sections import (
    ANNOTATION_IDS,
    CATEGORIES,
    IMAGE_COUNTS,
    LOCAL_COMPRESSIONS,
    CocoFileError,
    read_local_section,
    read_section,
)
from coco_beam.transforms.runtime.isolation import Isolated
from coco_beam.transforms.runtime.packing import relax_gc

__all__ = [
    "CocoFileError",  # re-exported: a file that cannot be read stops the run
    "ReadCocoAnnotations",
    "sections_of",
]

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
# A gzipped COCO JSON file is about a sixth of its JSON (instances_val2017: 25 MB to 4 MB): its
# listed size times this is about the JSON's.
_GZIP_RATIO = 6.0


def task_cost(task: tuple[AnnotationSource, str]) -> float:
    source, section = task
    size = max(source.size_bytes, 1) * (_GZIP_RATIO if source.path.endswith(".gz") else 1.0)
    return _SECTION_COST[section] * size


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


# Element types of the reader's outputs.
Records = Tuple[Tuple[str, int], bytes]  # ((split, bucket), packed records)
Count = Tuple[Tuple[str, str], int]  # ((counter, key), n)
_TAGGED = {
    REJECTED: Rejection,
    CATEGORIES: Tuple[str, dict],
    COUNTS: Count,
    ANNOTATION_IDS: Tuple[Tuple[str, str], np.ndarray],
    IMAGE_COUNTS: Tuple[str, int],
}


@beam.typehints.with_input_types(Tuple[int, Iterable[Tuple[AnnotationSource, str]]])
# Beam's --runtime_type_check holds every output, tagged ones too, to the main output's type:
# that type is the union of all, and ``ReadCocoAnnotations`` gives the main output its own.
@beam.typehints.with_output_types(Union[(Records, *_TAGGED.values())], **_TAGGED)
class _ReadSectionFn(beam.DoFn):
    """Streams a group of sections (``(key, [(source, section), ...])``); every record is
    emitted, rejected or counted. ``isolate``: a local file's sections are read at once in
    child processes (see the module), else one after another in the worker.

    ``keypoints_only`` names the splits that also have an instances file: their keypoint
    records keep only ids and keypoints, since their geometry repeats the instance's.
    """

    def __init__(self, keypoints_only: frozenset = frozenset(), isolate: bool = True):
        self._keypoints_only = keypoints_only
        self._isolate = isolate
        # The worker process's children read local files: one pool per process.
        self._shared = Shared()

    def setup(self):
        relax_gc()
        self._children = None
        if self._isolate:
            self._children = self._shared.acquire(Isolated).attach()

    def teardown(self):
        if self._children is not None:
            self._children.detach()
            self._children = None

    def process(self, element):
        _, tasks = element
        held = []
        for source, section in sorted(tasks, key=lambda t: t[1]):
            slim = source.family == "person_keypoints" and source.split in self._keypoints_only
            compression = _local_compression(source.path)
            if self._children is not None and compression is not None:
                held.append((source, section, slim, compression))
                continue
            # AUTO: decompressed by the file's extension (``.gz``), as it is read.
            with FileSystems.open(source.path, compression_type=CompressionTypes.AUTO) as f:
                for tag, value in read_section(f, source, section, slim=slim):
                    yield value if tag is None else beam.pvalue.TaggedOutput(tag, value)
        if held:
            for tag, value in _read_in_children(self._children, held):
                yield value if tag is None else beam.pvalue.TaggedOutput(tag, value)

    def finish_bundle(self):
        if self._children is not None:
            # Kept for the bundle's next file; closed at its end, so their memory goes back
            # before the images are decoded.
            self._children.close()


def _local_compression(path: str) -> str | None:
    """How a child opens ``path`` (a key of ``sections.LOCAL_COMPRESSIONS``), or None for a
    file it cannot open itself (an object store's, or a compression it does not know)."""
    if FileSystems.get_scheme(path) not in (None, "file"):
        return None
    compression = CompressionTypes.detect_compression_type(path)
    return compression if compression in LOCAL_COMPRESSIONS else None


_DONE = object()


def _read_in_children(children: Isolated, held: list):
    """``(tag, value)`` of every held section, read at once in ``children`` (as many at a
    time as it has); a file that cannot be read raises its ``CocoFileError`` here. The queue
    between them is short: a child waits while the worker has not taken its outputs."""
    outputs = queue.Queue(maxsize=16)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                outputs.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read(source, section, slim, compression):
        items = children.stream(
            read_local_section, source, section, slim=slim, compression=compression
        )
        try:
            for item in items:
                if not put(item):
                    return
        except BaseException as exc:  # noqa: BLE001 - raised in the worker's thread below
            put(exc)
            return
        finally:
            items.close()
        put(_DONE)

    threads = [threading.Thread(target=read, args=task, daemon=True) for task in held]
    for thread in threads:
        thread.start()
    running = len(threads)
    try:
        while running:
            item = outputs.get()
            if item is _DONE:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        stop.set()
        for thread in threads:
            thread.join()


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
    that is not JSON, or whose section is not a list (``"images": null``), fails the run with
    a message naming it and the section; a record that is not an object is rejected
    (``schema_violation``) like any other. A byte-order mark before the JSON is skipped.
    """

    def __init__(self, sources: list[AnnotationSource], workers: int = 1):
        super().__init__()
        self._sources = list(sources)
        self._workers = workers

    def expand(self, pbegin):
        dealt = deal_tasks(plan_tasks(self._sources), self._workers)
        # One worker: a file's sections travel together and are read at once, in its
        # children. Several local workers: each section alone, dealt evenly (``deal_tasks``).
        files, keyed = {}, []
        for i, task in enumerate(dealt):
            if task is not None:
                key = i if self._workers > 1 else files.setdefault(task[0].path, len(files))
                keyed.append((key, task))
        outputs = (
            pbegin
            | "ListSections" >> beam.Create(keyed, reshuffle=False)
            | "GroupSections" >> beam.GroupByKey()
            | "StreamSections"
            >> beam.ParDo(_ReadSectionFn(_splits_with_instances(self._sources))).with_outputs(
                REJECTED, CATEGORIES, COUNTS, ANNOTATION_IDS, IMAGE_COUNTS, main="records"
            )
        )
        outputs.records.element_type = Records
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
