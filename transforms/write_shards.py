"""``WriteShards``: read, check and decode each image once, and write deterministic shards.

This is the one stage that touches image bytes, and it runs after the last shuffle: it takes a
shard's ``ImagePlan``s (ids, paths, annotations and masks), reads each image's bytes through
Beam's filesystems, decodes and checks them, and writes the same rows to every format asked
for (Parquet: ``transforms.parquet_file``; TFRecord: ``transforms.tfrecord_file``), so both
formats hold the same images in the same shards in the same order. Reads and decodes run on a
small thread pool, ahead of the writer and in order: Pillow decodes and hashlib hashes without
the GIL, and on an object store the pool hides each read's latency.

Guarantees: rows are ordered by ``image_id``; the same plans
and settings give the same bytes, whatever the runner, workers or bundles. Each shard is first
written under a unique temporary name; ``PublishRun`` renames it, so a retried bundle never
leaves a duplicate. An image that cannot be read or decoded goes to ``rejected`` with a reason,
with its annotations and captions (``image_rejected``); a transient storage error is raised so
the runner retries the bundle.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import uuid
from concurrent.futures import ThreadPoolExecutor

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from schemas import parquet as contract
from schemas.records import REJECTED, ImagePlan, Reason, Rejection, ShardResult
from transforms.coco_json import RecordError
from transforms.images import DEFAULT_MAX_PIXELS, ImageFacts, inspect_image, is_not_found
from transforms.panoptic import PanopticFacts, inspect_panoptic
from transforms.parquet_file import ParquetFile
from transforms.progress import ProgressReporter
from transforms.runtime import pack, relax_gc, unpack
from transforms.sharding import shard_name
from transforms.stats import add_image, add_pixels
from transforms.tfrecord_file import TFRecordFile

__all__ = [
    "DIGESTS",
    "FORMATS",
    "STATS",
    "ShardWriterConfig",
    "WriteShards",
    "load_image",
]

FORMATS = ("parquet", "tfrecord")

# Side outputs: ``(split, statistics accumulator)`` per shard (see ``transforms.stats``), and
# ``(sha256 prefix, packed [(sha256, split, image_id), ...])`` to find identical images.
STATS = "stats"
DIGESTS = "digests"


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
    # Files written per shard; none computes statistics only (``coco-beam stats``).
    formats: tuple = ("parquet",)
    # TFRecord: one PNG mask per instance in ``image/object/mask`` (off: they dominate the size).
    tfrecord_masks: bool = False
    # Parquet: each panoptic record's semantic label map (a PNG of category ids).
    panoptic_semantic: bool = False
    # Off: no statistics are gathered (no pixel histograms, no accumulators, no digests).
    statistics: bool = True

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


def load_image(
    plan: ImagePlan, max_pixels: int, filesystem=None, histogram: bool = True
) -> tuple[bytes, ImageFacts, PanopticFacts | Rejection | None] | Rejection:
    """Reads and decodes one image, and its panoptic PNG if it has one. Permanent faults come
    back as a ``Rejection`` (the image's, or the panoptic record's in the third place);
    transient storage errors are raised. ``filesystem``: the Beam filesystem of
    ``plan.path``, if the caller holds one (finding it costs more than reading a small local
    file)."""
    try:
        fs = filesystem or FileSystems.get_filesystem(plan.path)
        with fs.open(plan.path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            data = f.read()
    except Exception as exc:
        if not is_not_found(exc):
            raise
        return Rejection(
            "image",
            str(plan.image_id),
            Reason.IMAGE_MISSING,
            type(exc).__name__,
            f"no file {plan.file_name!r} under the images folder",
            plan.source,
            plan.split,
        )
    try:
        facts = inspect_image(
            data, plan.width, plan.height, max_pixels=max_pixels, histogram=histogram
        )
    except RecordError as exc:
        return Rejection(
            "image",
            str(plan.image_id),
            exc.reason,
            type(exc).__name__,
            str(exc)[:200],
            plan.source,
            plan.split,
            hashlib.sha256(data).hexdigest(),
        )
    return data, facts, _load_panoptic(plan)


def _load_panoptic(plan: ImagePlan) -> PanopticFacts | Rejection | None:
    pan = plan.panoptic
    if pan is None:
        return None
    data = b""
    try:
        # Beam's FileSystems: the PNGs may sit on another filesystem than the images.
        with FileSystems.open(pan["path"], compression_type=CompressionTypes.UNCOMPRESSED) as f:
            data = f.read()
        return inspect_panoptic(data, plan.width, plan.height, pan["segments"])
    except RecordError as exc:
        reason, error, message = exc.reason, type(exc).__name__, str(exc)[:200]
    except Exception as exc:
        if not is_not_found(exc):
            raise
        reason, error = Reason.IMAGE_MISSING, type(exc).__name__
        message = f"no panoptic PNG {pan['file_name']!r}"
    return Rejection(
        "panoptic",
        str(plan.image_id),
        reason,
        error,
        message,
        pan["source"],
        plan.split,
        hashlib.sha256(data).hexdigest() if data else "",
    )


def _in_order(pool, fn, items, window):
    """``(item, fn(item))`` in input order, with at most ``window`` calls running ahead."""
    pending = collections.deque()
    for item in items:
        pending.append((item, pool.submit(fn, item)))
        if len(pending) >= window:
            head, future = pending.popleft()
            yield head, future.result()
    while pending:
        head, future = pending.popleft()
        yield head, future.result()


class _WriteShardFn(beam.DoFn):
    """Writes one shard. Metrics (namespace ``coco_beam``): ``images_decoded``,
    ``images_rejected``, ``shards_written``."""

    def __init__(self, config: ShardWriterConfig):
        self._config = config

    def setup(self):
        relax_gc()
        self._pool = ThreadPoolExecutor(self._config.io_threads, thread_name_prefix="decode")
        self._decoded = Metrics.counter("coco_beam", "images_decoded")
        self._rejected = Metrics.counter("coco_beam", "images_rejected")
        self._shards = Metrics.counter("coco_beam", "shards_written")
        self._progress = ProgressReporter(self._config.progress_dir, "done")
        self._filesystems = {}

    def teardown(self):
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _filesystem(self, path: str):
        scheme = FileSystems.get_scheme(path)
        if scheme not in self._filesystems:
            self._filesystems[scheme] = FileSystems.get_filesystem(path)
        return self._filesystems[scheme]

    def _open(self, fmt: str, temp_path: str, categories: dict):
        if fmt == "parquet":
            cats = sorted(categories.values(), key=lambda c: c["id"])
            return ParquetFile(
                temp_path,
                contract.arrow_schema(cats),
                compression=self._config.compression,
                row_group_bytes=self._config.row_group_bytes,
                semantic=self._config.panoptic_semantic,
            )
        return TFRecordFile(temp_path, categories, masks=self._config.tfrecord_masks)

    def process(self, element, num_shards, categories):
        (split, index), batches = element
        n = num_shards[split]
        plans = sorted((p for packed in batches for p in unpack(packed)), key=lambda p: p.image_id)
        attempt = uuid.uuid4().hex
        files = [
            self._open(
                fmt,
                FileSystems.join(
                    self._config.temp_dir, f"{shard_name(split, index, n, fmt)}.{attempt}"
                ),
                categories.get(split, {}),
            )
            for fmt in self._config.formats
        ]
        written = collections.Counter()
        rejections = []
        stats = collections.Counter()
        pixels = np.zeros(768, np.int64)
        digests: dict[str, list] = {}
        found = 0
        num_rows = 0
        window = 2 * self._config.io_threads + 2
        filesystem = self._filesystem(plans[0].path) if plans else None
        statistics = self._config.statistics
        load = functools.partial(
            load_image,
            max_pixels=self._config.max_pixels,
            filesystem=filesystem,
            histogram=statistics,
        )
        for plan, loaded in _in_order(self._pool, load, plans, window):
            self._progress.add(1)
            if isinstance(loaded, Rejection):
                found += loaded.reason != Reason.IMAGE_MISSING
                self._rejected.inc()
                rejections.append(loaded)
                rejections.extend(_dependents(plan))
                continue
            found += 1
            data, facts, panoptic = loaded
            if isinstance(panoptic, Rejection):
                rejections.append(panoptic)
                panoptic = None
            self._decoded.inc()
            for f in files:
                f.add(plan, data, facts, panoptic)
            num_rows += 1
            written["image"] += 1
            written["annotation"] += len(plan.annotations)
            written["caption"] += len(plan.captions)
            written["panoptic"] += panoptic is not None
            if not statistics:
                continue
            add_image(
                stats,
                width=plan.width,
                height=plan.height,
                fmt=facts.format,
                mode=facts.mode,
                exif_orientation=facts.exif_orientation,
                num_bytes=len(data),
                annotations=plan.annotations,
                captions=plan.captions,
                panoptic=panoptic,
            )
            pixels += facts.pixel_histogram
            digests.setdefault(facts.sha256[:2], []).append((facts.sha256, split, plan.image_id))
        results = tuple(f.close() for f in files)
        self._progress.flush()
        self._shards.inc()
        for rejection in rejections:
            yield beam.pvalue.TaggedOutput(REJECTED, rejection)
        if statistics:
            yield beam.pvalue.TaggedOutput(STATS, (split, add_pixels(stats, pixels)))
        for prefix in sorted(digests):
            yield beam.pvalue.TaggedOutput(DIGESTS, (prefix, pack(digests[prefix])))
        yield ShardResult(split, index, n, results, num_rows, dict(written), found, attempt)


def _dependents(plan: ImagePlan) -> list[Rejection]:
    message = f"image {plan.image_id} was rejected"
    panoptic = []
    if plan.panoptic is not None:
        panoptic.append(
            Rejection(
                "panoptic",
                str(plan.image_id),
                Reason.IMAGE_REJECTED,
                "RecordError",
                message,
                plan.panoptic["source"],
                plan.split,
            )
        )
    return panoptic + [
        Rejection(
            kind,
            str(rec["id"]),
            Reason.IMAGE_REJECTED,
            "RecordError",
            message,
            plan.source,
            plan.split,
        )
        for kind, records in (("annotation", plan.annotations), ("caption", plan.captions))
        for rec in records
    ]


class WriteShards(beam.PTransform):
    """Takes ``((split, shard_index), packed [plan, ...])`` from ``AssignShards``, with the
    ``num_shards`` and ``categories`` PCollections as side inputs; groups by shard and writes
    each shard under a temporary name, once per format of the config. Returns
    ``ShardResult``s (main), ``rejected`` images with their dependents, and per shard its
    ``stats`` accumulator and ``digests``, gathered from the same decode as the rows (the data
    is read once for shards, every format and statistics)."""

    def __init__(self, config: ShardWriterConfig, *, num_shards, categories):
        super().__init__()
        self._config = config
        self._num_shards = num_shards
        self._categories = categories

    def expand(self, keyed):
        return (
            keyed
            | "GroupByShard" >> beam.GroupByKey()
            | "ReadDecodeWrite"
            >> beam.ParDo(
                _WriteShardFn(self._config),
                num_shards=beam.pvalue.AsDict(self._num_shards),
                categories=beam.pvalue.AsDict(self._categories),
            ).with_outputs(REJECTED, STATS, DIGESTS, main="shards")
        )
