"""``WriteShards``: read, check and decode each image once, and write deterministic shards.

This is the one stage that touches image bytes, and it runs after the last shuffle: it takes a
shard's ``ImagePlan``s (ids, paths, annotations and masks), reads each image's bytes through
Beam's filesystems, decodes and checks them, and writes the same rows to every format asked
for (Parquet: ``transforms.shards.parquet``; TFRecord: ``transforms.shards.tfrecord``), so both
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
import json
import types
import uuid
from concurrent.futures import ThreadPoolExecutor

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from coco_beam.schemas import parquet as contract
from coco_beam.schemas.errors import RecordError
from coco_beam.schemas.records import REJECTED, ImagePlan, Reason, Rejection, ShardFile, ShardResult
from coco_beam.transforms.images.decode import (
    DEFAULT_MAX_PIXELS,
    ImageFacts,
    inspect_image,
    is_not_found,
)
from coco_beam.transforms.images.panoptic import PanopticFacts, inspect_panoptic
from coco_beam.transforms.runs.incremental import (
    PreviousRun,
    crc32c_hex,
    link_or_copy,
    read_state,
    record_fingerprint,
    shard_fingerprint,
    state_bytes,
    stored_crc32c,
)
from coco_beam.transforms.runtime.isolation import Isolated, NativeCrash
from coco_beam.transforms.runtime.packing import pack, relax_gc, unpack
from coco_beam.transforms.runtime.progress import ProgressReporter
from coco_beam.transforms.shards.parquet import ParquetFile
from coco_beam.transforms.shards.sharding import shard_name
from coco_beam.transforms.shards.tfrecord import TFRecordFile
from coco_beam.transforms.stats.gather import add_image, add_pixel_sums

__all__ = [
    "DIGESTS",
    "FORMATS",
    "STATS",
    "ShardWriterConfig",
    "WriteShards",
    "load_image",
]

FORMATS = ("parquet", "tfrecord")

# A file whose name says another format than its bytes (a PNG named .jpg) is written as it is,
# with this flag; the format written is the bytes'.
FLAG_EXTENSION_MISMATCH = "extension_mismatch"
_EXTENSIONS = {"jpg": "jpeg", "jpeg": "jpeg", "jpe": "jpeg", "png": "png"}

# Side outputs: ``(split, statistics accumulator)`` per shard (see ``transforms.stats.gather``), and
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
    # The output's last complete run, when this run rebuilds incrementally.
    previous: PreviousRun | None = None
    # Decode in child processes, so a native crash rejects one image instead of the worker.
    isolate_decoders: bool = True
    # What the run's publishing step will need (``runtime.warmup.prepare``), imported in the
    # background while shards are written rather than at the end, after the last one.
    prepare: tuple[str, ...] = ()

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


@dataclasses.dataclass(frozen=True)
class Loaded:
    """One image read (and decoded unless its facts were known): its bytes, what decoding
    found, its panoptic record's facts (or rejection), and the CRC32C of the image and PNG."""

    data: bytes
    facts: ImageFacts
    panoptic: PanopticFacts | Rejection | None
    image_fp: str
    panoptic_fp: str | None
    # Exact pixel sums ``(n, sums, squares)``; None when statistics are off.
    pixels: tuple | None
    reused: bool = False


def load_image(
    plan: ImagePlan,
    max_pixels: int,
    filesystem=None,
    histogram: bool = True,
    known: dict | None = None,
    isolated: Isolated | None = None,
) -> Loaded | Rejection:
    """Reads and decodes one image, and its panoptic PNG if it has one. Permanent faults come
    back as a ``Rejection`` (the image's, or the panoptic record's in ``Loaded.panoptic``);
    transient storage errors are raised. ``filesystem``: the Beam filesystem of
    ``plan.path``, if the caller holds one (finding it costs more than reading a small local
    file). ``known``: the previous run's state row of this image; when its bytes' CRC32C and
    the JSON's size are the same, its facts are taken from there and the image is not
    decoded again. ``isolated``: decode in its child processes, where a crash of the decoder
    rejects the image (``decoder_crash``) instead of killing the worker."""
    try:
        fs = filesystem or FileSystems.get_filesystem(plan.path)
        with fs.open(plan.path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            data = f.read()
    except Exception as exc:
        if not is_not_found(exc):
            raise
        return Rejection(
            kind="image",
            key=str(plan.image_id),
            reason=Reason.IMAGE_MISSING,
            error_type=type(exc).__name__,
            message=f"no file {plan.file_name!r} under the images folder",
            source=plan.source,
            split=plan.split,
        )
    image_fp = crc32c_hex(data)
    if _facts_known(known, plan, image_fp, histogram):
        facts = ImageFacts(
            known["sha256"],
            known["format"],
            known["mode"],
            known["decoded_width"],
            known["decoded_height"],
            known["exif_orientation"],
            tuple(f for f in known["flags"] if f != FLAG_EXTENSION_MISMATCH),
        )
        pixels = (known["px_n"], known["px_sum"], known["px_sq"]) if histogram else None
        panoptic, panoptic_fp = _load_panoptic(plan, isolated)
        facts = _flag_extension(plan, facts)
        return Loaded(data, facts, panoptic, image_fp, panoptic_fp, pixels, reused=True)
    try:
        facts = _call(
            isolated,
            inspect_image,
            data,
            plan.width,
            plan.height,
            max_pixels=max_pixels,
            histogram=histogram,
        )
    except RecordError as exc:
        return Rejection(
            kind="image",
            key=str(plan.image_id),
            reason=exc.reason,
            error_type=type(exc).__name__,
            message=str(exc)[:200],
            source=plan.source,
            split=plan.split,
            payload_sha256=hashlib.sha256(data).hexdigest(),
        )
    pixels = facts.pixel_sums if histogram else None
    # The panoptic PNG is read only for an image that is written (a rejected image's panoptic
    # record goes with it).
    panoptic, panoptic_fp = _load_panoptic(plan, isolated)
    return Loaded(data, _flag_extension(plan, facts), panoptic, image_fp, panoptic_fp, pixels)


def _flag_extension(plan: ImagePlan, facts: ImageFacts) -> ImageFacts:
    """Flags a file whose name says another format than its bytes (the name may change while
    the bytes do not: this is decided anew every run)."""
    extension = plan.file_name.rsplit(".", 1)[-1].lower()
    if _EXTENSIONS.get(extension) == facts.format:
        return facts
    return dataclasses.replace(facts, flags=(*facts.flags, FLAG_EXTENSION_MISMATCH))


def _facts_known(known: dict | None, plan: ImagePlan, image_fp: str, histogram: bool) -> bool:
    return (
        known is not None
        and known["written"]
        and known["image_fp"] == image_fp
        and (known["width"], known["height"]) == (plan.width, plan.height)
        and (not histogram or known["px_n"] is not None)
    )


def _call(isolated: Isolated | None, fn, *args, **kwargs):
    """``fn(*args, **kwargs)``, in a child process when ``isolated``; a crash of the child is
    a ``decoder_crash`` of the record."""
    if isolated is None:
        return fn(*args, **kwargs)
    try:
        return isolated.call(fn, *args, **kwargs)
    except NativeCrash as exc:
        raise RecordError(Reason.DECODER_CRASH, str(exc)) from None


def _load_panoptic(
    plan: ImagePlan, isolated: Isolated | None = None
) -> tuple[PanopticFacts | Rejection | None, str | None]:
    """The panoptic record's facts (or its rejection) and the CRC32C of its PNG."""
    pan = plan.panoptic
    if pan is None:
        return None, None
    data = b""
    try:
        # Beam's FileSystems: the PNGs may sit on another filesystem than the images.
        with FileSystems.open(pan["path"], compression_type=CompressionTypes.UNCOMPRESSED) as f:
            data = f.read()
        facts = _call(isolated, inspect_panoptic, data, plan.width, plan.height, pan["segments"])
        return facts, crc32c_hex(data)
    except RecordError as exc:
        reason, error, message = exc.reason, type(exc).__name__, str(exc)[:200]
    except Exception as exc:
        if not is_not_found(exc):
            raise
        reason, error = Reason.IMAGE_MISSING, type(exc).__name__
        message = f"no panoptic PNG {pan['file_name']!r}"
    rejection = Rejection(
        kind="panoptic",
        key=str(plan.image_id),
        reason=reason,
        error_type=error,
        message=message,
        source=pan["source"],
        split=plan.split,
        payload_sha256=hashlib.sha256(data).hexdigest() if data else "",
    )
    return rejection, crc32c_hex(data) if data else None


def _panoptic_stats(panoptic: PanopticFacts) -> str:
    """The statistics' view of an accepted panoptic record, as the state keeps it."""
    segments = [[s["category_id"], bool(s["isthing"]), s["area"]] for s in panoptic.segments]
    return json.dumps({"void": panoptic.void_pixels, "segments": segments})


def _panoptic_from_state(text: str) -> types.SimpleNamespace:
    doc = json.loads(text)
    segments = [{"category_id": c, "isthing": t, "area": a} for c, t, a in doc["segments"]]
    return types.SimpleNamespace(void_pixels=doc["void"], segments=segments)


def _probe(plan: ImagePlan, filesystem) -> tuple[str | None, str | None]:
    """The CRC32C of an image and of its panoptic PNG, from the store's checksum where it
    keeps one, else from the bytes; None for a file that is not there."""

    def one(path, fs):
        stored = stored_crc32c(path)
        if stored is not None:
            return stored
        try:
            with fs.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
                return crc32c_hex(f.read())
        except Exception as exc:
            if not is_not_found(exc):
                raise
            return None

    image = one(plan.path, filesystem)
    if plan.panoptic is None:
        return image, None
    return image, one(plan.panoptic["path"], FileSystems.get_filesystem(plan.panoptic["path"]))


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
        self._reused = Metrics.counter("coco_beam", "shards_reused")
        self._progress = ProgressReporter(self._config.progress_dir, "done")
        self._filesystems = {}
        self._isolated = None
        if self._config.isolate_decoders:
            self._isolated = Isolated()
        if self._config.prepare:
            from coco_beam.transforms.runtime.warmup import prepare_in_background

            prepare_in_background(self._config.prepare)

    def teardown(self):
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._isolated is not None:
            self._isolated.close()

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
        cats = categories.get(split, {})
        shard = _Shard(split, index, n, uuid.uuid4().hex, plans)
        filesystem = self._filesystem(plans[0].path) if plans else None
        previous = None
        if self._config.previous is not None and self._config.formats:
            previous = self._config.previous.shard(split, index, n)
        known = {}
        if previous is not None:
            try:
                known = read_state(previous["state"])
            except Exception as exc:
                if not is_not_found(exc):
                    raise
                previous = None  # the previous run's state is gone: build this shard afresh
        if self._config.formats:
            shard.record_fps = [record_fingerprint(p) for p in plans]
        if previous is not None and self._reusable(shard, known, previous, cats, filesystem):
            try:
                # Its outputs are all made before the first is given out.
                outputs = list(self._reuse(shard, known, previous))
            except Exception as exc:
                if not is_not_found(exc):
                    raise
                outputs = None  # a previous file is gone: write the shard instead
            if outputs is not None:
                yield from outputs
                return
            # New temporary names: those linked so far are the previous run's files, and
            # writing through a link would change them.
            shard.attempt = uuid.uuid4().hex
        yield from self._write(shard, known, cats, filesystem)

    def _temp_path(self, shard: _Shard, fmt: str) -> str:
        name = shard_name(shard.split, shard.index, shard.num_shards, fmt)
        return FileSystems.join(self._config.temp_dir, f"{name}.{shard.attempt}")

    def _reusable(self, shard, known, previous, cats, filesystem) -> bool:
        """True when the previous run wrote this shard from exactly these unchanged images."""
        if len(known) != len(shard.plans) or any(
            (row := known.get(plan.image_id)) is None
            or not row["written"]
            or row["record_fp"] != fp
            or (plan.panoptic is not None and row["panoptic_stats"] is None)
            for plan, fp in zip(shard.plans, shard.record_fps, strict=True)
        ):
            return False
        probe = functools.partial(_probe, filesystem=filesystem)
        window = 4 * self._config.io_threads
        for plan, (image_fp, panoptic_fp) in _in_order(self._pool, probe, shard.plans, window):
            row = known[plan.image_id]
            if (image_fp, panoptic_fp) != (row["image_fp"], row["panoptic_fp"]):
                return False
        members = [
            (p.image_id, fp, known[p.image_id]["image_fp"], known[p.image_id]["panoptic_fp"])
            for p, fp in zip(shard.plans, shard.record_fps, strict=True)
        ]
        shard.fingerprint = shard_fingerprint(shard.num_shards, cats, members)
        return shard.fingerprint == previous["fingerprint"] and all(
            fmt in previous["files"] for fmt in self._config.formats
        )

    def _reuse(self, shard, known, previous):
        """Puts the previous run's files of this shard into this run, unchanged, and counts
        its images from the state (nothing is read or decoded)."""
        files = []
        for fmt in self._config.formats:
            old = previous["files"][fmt]
            temp = self._temp_path(shard, fmt)
            link_or_copy(old["path"], temp)
            files.append(ShardFile(fmt, temp, old["bytes"], old["sha256"]))
        state = self._temp_path(shard, "state.parquet")
        link_or_copy(previous["state"], state)
        acc = _Accumulator(shard.split, self._config.statistics)
        for plan in shard.plans:
            row = known[plan.image_id]
            panoptic = None
            if plan.panoptic is not None:
                panoptic = _panoptic_from_state(row["panoptic_stats"])
            acc.add(
                plan,
                row["format"],
                row["mode"],
                row["exif_orientation"],
                row["num_bytes"],
                row["sha256"],
                (row["px_n"], row["px_sum"], row["px_sq"]),
                panoptic,
                row["flags"],
            )
        self._progress.add(len(shard.plans))
        self._progress.flush()
        self._reused.inc()
        shard.files_found = len(shard.plans)
        yield from self._emit(shard, tuple(files), state, acc, [], reused=True)

    def _write(self, shard, known, cats, filesystem):
        files = [self._open(fmt, self._temp_path(shard, fmt), cats) for fmt in self._config.formats]
        rejections = []
        acc = _Accumulator(shard.split, self._config.statistics)
        state_rows = []
        window = 2 * self._config.io_threads + 2
        load = functools.partial(
            _load_known,
            max_pixels=self._config.max_pixels,
            filesystem=filesystem,
            histogram=self._config.statistics,
            known=known,
            isolated=self._isolated,
        )
        ids = (p.image_id for p in shard.plans)
        record_fps = dict(zip(ids, shard.record_fps or (), strict=False))
        for plan, loaded in _in_order(self._pool, load, shard.plans, window):
            self._progress.add(1)
            record_fp = record_fps.get(plan.image_id, "")
            if isinstance(loaded, Rejection):
                shard.files_found += loaded.reason != Reason.IMAGE_MISSING
                self._rejected.inc()
                rejections.append(loaded)
                rejections.extend(_dependents(plan))
                state_rows.append(_state_row(plan, record_fp, None))
                continue
            shard.files_found += 1
            panoptic = loaded.panoptic
            if isinstance(panoptic, Rejection):
                rejections.append(panoptic)
                panoptic = None
            if not loaded.reused:
                self._decoded.inc()
            for f in files:
                f.add(plan, loaded.data, loaded.facts, panoptic)
            state_rows.append(_state_row(plan, record_fp, loaded, panoptic))
            facts = loaded.facts
            acc.add(
                plan,
                facts.format,
                facts.mode,
                facts.exif_orientation,
                len(loaded.data),
                facts.sha256,
                loaded.pixels,
                panoptic,
                facts.flags,
            )
        results = tuple(f.close() for f in files)
        state = None
        if self._config.formats:
            state = self._temp_path(shard, "state.parquet")
            _write_file(state, state_bytes(state_rows))
            members = [
                (r["image_id"], r["record_fp"], r.get("image_fp"), r.get("panoptic_fp"))
                for r in state_rows
            ]
            shard.fingerprint = shard_fingerprint(shard.num_shards, cats, members)
        self._progress.flush()
        yield from self._emit(shard, results, state, acc, rejections, reused=False)

    def _emit(self, shard, files, state, acc, rejections, *, reused):
        self._shards.inc()
        for rejection in rejections:
            yield beam.pvalue.TaggedOutput(REJECTED, rejection)
        if self._config.statistics:
            yield beam.pvalue.TaggedOutput(STATS, (shard.split, acc.stats))
        for prefix in sorted(acc.digests):
            yield beam.pvalue.TaggedOutput(DIGESTS, (prefix, pack(acc.digests[prefix])))
        yield ShardResult(
            shard.split,
            shard.index,
            shard.num_shards,
            files,
            acc.num_rows,
            dict(acc.written),
            shard.files_found,
            shard.attempt,
            state=state,
            fingerprint=shard.fingerprint,
            reused=reused,
        )


@dataclasses.dataclass
class _Shard:
    split: str
    index: int
    num_shards: int
    attempt: str  # unique per execution of the shard: a retried bundle writes another
    plans: list
    record_fps: list | None = None
    fingerprint: str = ""
    files_found: int = 0


class _Accumulator:
    """A shard's counts, statistics accumulator and content hashes, image by image."""

    def __init__(self, split: str, statistics: bool):
        self.split, self.statistics = split, statistics
        self.written = collections.Counter()
        self.num_rows = 0
        self.stats = collections.Counter()
        self.digests: dict[str, list] = {}

    def add(self, plan, fmt, mode, exif_orientation, num_bytes, sha256, pixels, panoptic, flags):
        self.num_rows += 1
        self.written["image"] += 1
        self.written["annotation"] += len(plan.annotations)
        self.written["caption"] += len(plan.captions)
        self.written["panoptic"] += panoptic is not None
        if not self.statistics:
            return
        add_image(
            self.stats,
            width=plan.width,
            height=plan.height,
            fmt=fmt,
            mode=mode,
            exif_orientation=exif_orientation,
            num_bytes=num_bytes,
            annotations=plan.annotations,
            captions=plan.captions,
            panoptic=panoptic,
            flags=sorted(set(plan.flags) | set(flags)),
        )
        add_pixel_sums(self.stats, *pixels)
        self.digests.setdefault(sha256[:2], []).append((sha256, self.split, plan.image_id))


def _load_known(plan, *, max_pixels, filesystem, histogram, known, isolated):
    return load_image(plan, max_pixels, filesystem, histogram, known.get(plan.image_id), isolated)


def _state_row(plan: ImagePlan, record_fp: str, loaded, panoptic=None) -> dict:
    row = {
        "image_id": plan.image_id,
        "written": loaded is not None,
        "record_fp": record_fp,
        "width": plan.width,
        "height": plan.height,
    }
    if loaded is None:
        return row
    facts = loaded.facts
    row.update(
        image_fp=loaded.image_fp,
        panoptic_fp=loaded.panoptic_fp,
        decoded_width=facts.width,
        decoded_height=facts.height,
        sha256=facts.sha256,
        format=facts.format,
        mode=facts.mode,
        exif_orientation=facts.exif_orientation,
        flags=list(facts.flags),
        num_bytes=len(loaded.data),
        panoptic_stats=_panoptic_stats(panoptic) if panoptic is not None else None,
    )
    if loaded.pixels is not None:
        row.update(px_n=loaded.pixels[0], px_sum=loaded.pixels[1], px_sq=loaded.pixels[2])
    return row


def _write_file(path: str, data: bytes) -> None:
    with FileSystems.create(
        path, mime_type="application/octet-stream", compression_type=CompressionTypes.UNCOMPRESSED
    ) as f:
        f.write(data)


def _dependents(plan: ImagePlan) -> list[Rejection]:
    message = f"image {plan.image_id} was rejected"
    panoptic = []
    if plan.panoptic is not None:
        panoptic.append(
            Rejection(
                kind="panoptic",
                key=str(plan.image_id),
                reason=Reason.IMAGE_REJECTED,
                error_type="RecordError",
                message=message,
                source=plan.panoptic["source"],
                split=plan.split,
            )
        )
    return panoptic + [
        Rejection(
            kind=kind,
            key=str(rec["id"]),
            reason=Reason.IMAGE_REJECTED,
            error_type="RecordError",
            message=message,
            source=plan.source,
            split=plan.split,
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
