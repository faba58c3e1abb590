"""``WriteShards``: read, check and decode each image once, and write deterministic shards.

This is the one stage that touches image bytes, and it runs after the last shuffle: it takes a
shard's ``ImagePlan``s (ids, paths, annotations with their raw segmentations), makes each
image's masks, reads its bytes through Beam's filesystems, decodes and checks them
(``shards.load``), and writes the same rows to
every format asked for (``shards.formats``), so all formats hold the same images in the same
shards in the same order. Reads and decodes run on a small thread pool, ahead of the writer and
in order: Pillow decodes and hashlib hashes without the GIL, and on an object store the pool
hides each read's latency. Decoding runs in child processes (``runtime.isolation``) shared by
every instance of the writer in a worker process, and bounded by its cores; so do the masks
(``images.masks``), a window ahead of the decodes: per-annotation work runs here, on every
core, rather than before the shard shuffle, and an annotation whose mask cannot be made goes
to ``rejected`` with its reason. A shard the previous run wrote from the same images is reused
rather than written (``shards.reuse``).

Guarantees: rows are ordered by ``image_id``; the same plans and settings give the same bytes,
whatever the runner, workers or bundles. Each shard is first written under a unique temporary
name; ``PublishRun`` renames it, so a retried bundle never leaves a duplicate. An image that
cannot be read or decoded goes to ``rejected`` with a reason, with its annotations and captions
(``image_rejected``); a transient storage error is raised so the runner retries the bundle.
"""

from __future__ import annotations

import dataclasses
import uuid
from concurrent.futures import ThreadPoolExecutor

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.typehints import Any, Dict, Iterable, Tuple, Union
from apache_beam.utils.shared import Shared

from coco_beam.schemas.records import REJECTED, Reason, Rejection, ShardResult
from coco_beam.transforms.images.decode import is_not_found
from coco_beam.transforms.runs.incremental import read_state, shard_fingerprint
from coco_beam.transforms.runtime.faults import maybe_fail
from coco_beam.transforms.runtime.isolation import Isolated
from coco_beam.transforms.runtime.packing import pack, relax_gc, unpack
from coco_beam.transforms.runtime.progress import ProgressReporter
from coco_beam.transforms.shards.accounting import (
    ShardTally,
    WrittenImage,
    dependents,
    state_row,
    write_state,
)
from coco_beam.transforms.shards.config import ShardWriterConfig
from coco_beam.transforms.shards.formats import REGISTRY, open_file
from coco_beam.transforms.shards.load import ImageLoader, expected_format, in_order
from coco_beam.transforms.shards.reuse import link_previous, reusable_fingerprint
from coco_beam.transforms.shards.sharding import shard_name

__all__ = [
    "DIGESTS",
    "PHASHES",
    "STATS",
    "ShardWriterConfig",  # re-exported: the transform's settings
    "WriteShards",
]

# Side outputs: ``(split, statistics accumulator)`` per shard (see ``transforms.stats.gather``), and
# ``(sha256 prefix, packed [(sha256, split, image_id), ...])`` to find identical images.
STATS = "stats"
DIGESTS = "digests"
# ``(split, packed [(split, image_id, perceptual hash, source path), ...])`` per shard, to find
# near-duplicate images (``transforms.stats.near_duplicates``).
PHASHES = "phashes"

# What the shard's state file is called among its formats, in its temporary path.
_STATE = "state"
_STATE_EXTENSION = "state.parquet"

# ``((split, shard index), packed [plan, ...])``: ``AssignShards``' output; then grouped by shard.
_KeyedPlans = Tuple[Tuple[str, int], bytes]
_ShardPlans = Tuple[Tuple[str, int], Iterable[bytes]]
# Beam checks every output of a DoFn against its one main hint at run time (checks per output
# are a to-do of Beam's), so that hint is the union of all outputs; each tagged output has its
# own, and ``WriteShards`` narrows the main output to ``ShardResult``.
_WriterOutput = Union[ShardResult, Rejection, Tuple[str, Any]]


@dataclasses.dataclass(kw_only=True)
class _Shard:
    split: str
    index: int
    num_shards: int
    attempt: str  # unique per execution of the shard: a retried bundle writes another
    plans: list
    record_fps: list | None = None
    # Annotations of the shard whose masks could not be made, once they were all made ahead.
    masks_rejected: list = dataclasses.field(default_factory=list)
    fingerprint: str = ""
    files_found: int = 0
    # The dataset's candidates for the report's examples (``PreselectExamples``), if given.
    examples: dict | None = None

    @property
    def key(self) -> str:
        return f"{self.split}-{self.index:05d}"


@beam.typehints.with_input_types(
    _ShardPlans, num_shards=Dict[str, int], categories=Dict[str, Dict[int, Any]], examples=Any
)
@beam.typehints.with_output_types(
    _WriterOutput,
    rejected=Rejection,
    stats=Tuple[str, Any],
    digests=Tuple[str, bytes],
    phashes=Tuple[str, bytes],
)
class _WriteShardFn(beam.DoFn):
    """Writes one shard. Metrics (namespace ``coco_beam``): ``images_decoded``,
    ``images_rejected``, ``shards_written``, ``shards_reused``."""

    def __init__(self, config: ShardWriterConfig):
        self._config = config
        # One pool of decoder children per worker process, whatever the DoFn instances in it.
        self._decoders = Shared()

    def setup(self):
        relax_gc()
        self._pool = ThreadPoolExecutor(self._config.io_threads, thread_name_prefix="decode")
        self._decoded = Metrics.counter("coco_beam", "images_decoded")
        self._rejected = Metrics.counter("coco_beam", "images_rejected")
        self._shards = Metrics.counter("coco_beam", "shards_written")
        self._reused = Metrics.counter("coco_beam", "shards_reused")
        self._masks = Metrics.counter("coco_beam", "masks_rasterized")
        self._masks_rejected = Metrics.counter("coco_beam", "masks_rejected")
        self._progress = ProgressReporter(self._config.progress_dir, "done")
        self._filesystems = {}
        self._isolated = None
        if self._config.isolate_decoders:
            self._isolated = self._decoders.acquire(Isolated).attach()
        if self._config.prepare:
            from coco_beam.transforms.runtime.warmup import prepare_in_background

            prepare_in_background(self._config.prepare)

    def teardown(self):
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._isolated is not None:
            self._isolated.detach()
            self._isolated = None

    def _filesystem(self, path: str):
        scheme = FileSystems.get_scheme(path)
        if scheme not in self._filesystems:
            self._filesystems[scheme] = FileSystems.get_filesystem(path)
        return self._filesystems[scheme]

    def _temp_path(self, shard: _Shard, what: str) -> str:
        extension = _STATE_EXTENSION if what == _STATE else REGISTRY[what].extension
        name = shard_name(shard.split, shard.index, shard.num_shards, extension)
        return FileSystems.join(self._config.temp_dir, f"{name}.{shard.attempt}")

    def process(self, element, num_shards, categories, examples=None):
        (split, index), batches = element
        plans = sorted((p for packed in batches for p in unpack(packed)), key=lambda p: p.image_id)
        shard = _Shard(
            split=split,
            index=index,
            num_shards=num_shards[split],
            attempt=uuid.uuid4().hex,
            plans=plans,
            examples=examples,
        )
        cats = categories.get(split, {})
        filesystem = self._filesystem(plans[0].path) if plans else None
        previous, known = self._previous(shard)
        if previous is not None:
            self._prepare_all(shard)
            outputs = self._reuse(shard, known, previous, cats, filesystem)
            if outputs is not None:
                yield from outputs
                return
        yield from self._write(shard, known, cats, filesystem)

    def _previous(self, shard: _Shard) -> tuple[dict | None, dict]:
        """The previous run's entry of this shard and its state rows by image id, when this
        run rebuilds incrementally; ``(None, {})`` otherwise or when its state is gone."""
        if self._config.previous is None or not self._config.formats:
            return None, {}
        previous = self._config.previous.shard(shard.split, shard.index, shard.num_shards)
        if previous is None:
            return None, {}
        try:
            return previous, read_state(previous["state"])
        except Exception as exc:
            if not is_not_found(exc):
                raise
            return None, {}  # the previous run's state is gone: build this shard afresh

    def _prepared(self, ready) -> list:
        """Counts one plan's masks; returns the rejections of those that could not be made."""
        self._masks.inc(ready.masks_made)
        self._masks_rejected.inc(len(ready.masks_rejected))
        return ready.masks_rejected

    def _prepare_all(self, shard: _Shard) -> None:
        """Every plan's masks and record fingerprint, ahead of any read: whether the previous
        run's shard can be reused is decided from the fingerprints."""
        loader = ImageLoader(
            max_pixels=self._config.max_pixels,
            isolated=self._isolated,
            fingerprint=True,
            polygons=self._config.keeps_polygons,
        )
        window = 2 * self._config.io_threads + 2
        shard.record_fps = []
        for _, ready in in_order(self._pool, loader.prepare, shard.plans, window):
            shard.record_fps.append(ready.record_fp)
            shard.masks_rejected.extend(self._prepared(ready))

    def _reuse(self, shard, known, previous, cats, filesystem) -> list | None:
        """The outputs of the shard reused from the previous run, all made before the first is
        given out; None when it cannot be reused."""
        fingerprint = reusable_fingerprint(
            shard.plans,
            shard.record_fps,
            known,
            previous,
            num_shards=shard.num_shards,
            categories=cats,
            formats=self._config.formats,
            pool=self._pool,
            window=4 * self._config.io_threads,
            filesystem=filesystem,
        )
        if fingerprint is None:
            return None
        tally = ShardTally(shard.split, self._config.statistics, self._config.near_duplicates)
        try:
            files, state = link_previous(
                shard.plans,
                known,
                previous,
                formats=self._config.formats,
                temp_path=lambda what: self._temp_path(shard, what),
                tally=tally,
            )
        except Exception as exc:
            if not is_not_found(exc):
                raise
            # A previous file is gone: the shard is written instead, under new temporary
            # names (those linked so far are the previous run's files, and writing through a
            # link would change them).
            shard.attempt = uuid.uuid4().hex
            return None
        shard.fingerprint = fingerprint
        self._reused_examples(shard, known, tally, filesystem)
        self._progress.add(len(shard.plans))
        self._progress.flush()
        self._reused.inc()
        shard.files_found = len(shard.plans)
        return list(self._emit(shard, files, state, tally, shard.masks_rejected, reused=True))

    def _reused_examples(self, shard, known, tally, filesystem) -> None:
        """The report's examples of a reused shard: its images are not decoded, so those few
        that could enter an example set are read again for their thumbnails, and only those,
        in image order (the sets are then what writing the shard afresh gives)."""
        if not self._config.statistics:
            return
        load = ImageLoader(
            max_pixels=self._config.max_pixels,
            filesystem=filesystem,
            histogram=False,
            known=known,
            isolated=self._isolated,
        )
        tally.examples.preselect(shard.plans, shard.examples)
        for plan in shard.plans:
            ask = tally.examples.request(plan, expected_format=expected_format(plan.file_name))
            if ask is None:
                continue
            loaded = load(plan, ask)
            if not isinstance(loaded, Rejection):
                tally.examples.add(plan, loaded.facts)

    def _write(self, shard, known, cats, filesystem):
        files = [
            open_file(fmt, self._temp_path(shard, fmt), cats, self._config)
            for fmt in self._config.formats
        ]
        rejections = list(shard.masks_rejected)
        tally = ShardTally(shard.split, self._config.statistics, self._config.near_duplicates)
        state_rows = []
        load = ImageLoader(
            max_pixels=self._config.max_pixels,
            filesystem=filesystem,
            histogram=self._config.statistics,
            phash=self._config.near_duplicates,
            known=known,
            isolated=self._isolated,
            fingerprint=bool(self._config.formats) and shard.record_fps is None,
            polygons=self._config.keeps_polygons,
        )
        window = 2 * self._config.io_threads + 2
        ids = (p.image_id for p in shard.plans)
        record_fps = dict(zip(ids, shard.record_fps or (), strict=False))
        halfway = len(shard.plans) // 2
        # Each plan's masks are made first, in a decoder child, a window ahead of the reads.
        # Which images could be the report's examples is then asked here, in this thread and
        # in image order as reads are queued (it needs the masks); only those get a
        # thumbnail from their decode.
        if self._config.statistics:
            tally.examples.preselect(shard.plans, shard.examples)
        prepared = in_order(self._pool, load.prepare, shard.plans, window)
        asks = (
            (p, tally.examples.request(p, expected_format=expected_format(p.file_name)), ready)
            if self._config.statistics
            else (p, None, ready)
            for p, ready in prepared
        )
        loads = in_order(self._pool, lambda ask: load(*ask[:2]), asks, window)
        for position, ((plan, _, ready), loaded) in enumerate(loads):
            if position == halfway:
                maybe_fail("write", shard.key)  # a fault on purpose, once part is written
            self._progress.add(1)
            rejections.extend(self._prepared(ready))
            record_fp = ready.record_fp or record_fps.get(plan.image_id, "")
            if isinstance(loaded, Rejection):
                shard.files_found += loaded.reason != Reason.IMAGE_MISSING
                self._rejected.inc()
                rejections.append(loaded)
                rejections.extend(dependents(plan))
                state_rows.append(state_row(plan, record_fp=record_fp))
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
            state_rows.append(
                state_row(plan, record_fp=record_fp, loaded=loaded, panoptic=panoptic)
            )
            tally.add(plan, WrittenImage.from_loaded(loaded, panoptic))
        results = tuple(f.close() for f in files)
        state = None
        if self._config.formats:
            state = self._temp_path(shard, _STATE)
            write_state(state, state_rows)
            members = [
                (r["image_id"], r["record_fp"], r.get("image_fp"), r.get("panoptic_fp"))
                for r in state_rows
            ]
            shard.fingerprint = shard_fingerprint(shard.num_shards, cats, members)
        self._progress.flush()
        yield from self._emit(shard, results, state, tally, rejections, reused=False)

    def _emit(self, shard, files, state, tally, rejections, *, reused):
        self._shards.inc()
        for rejection in rejections:
            yield beam.pvalue.TaggedOutput(REJECTED, rejection)
        if self._config.statistics:
            yield beam.pvalue.TaggedOutput(STATS, (shard.split, tally.stats))
        for prefix in sorted(tally.digests):
            yield beam.pvalue.TaggedOutput(DIGESTS, (prefix, pack(tally.digests[prefix])))
        if tally.phashes:
            yield beam.pvalue.TaggedOutput(PHASHES, (shard.split, pack(tally.phashes)))
        yield ShardResult(
            split=shard.split,
            index=shard.index,
            num_shards=shard.num_shards,
            files=files,
            num_rows=tally.num_rows,
            written=dict(tally.written),
            files_found=shard.files_found,
            attempt=shard.attempt,
            state=state,
            fingerprint=shard.fingerprint,
            reused=reused,
        )


class WriteShards(beam.PTransform):
    """Takes ``((split, shard_index), packed [plan, ...])`` from ``AssignShards``, with the
    ``num_shards`` and ``categories`` PCollections as side inputs (and ``examples``, when
    given: ``PreselectExamples``' one dict, the dataset's candidates for the report's example
    thumbnails; else each shard preselects its own); groups by shard and writes each shard
    under a temporary name, once per format of the config. Returns
    ``ShardResult``s (main), ``rejected`` images with their dependents, and per shard its
    ``stats`` accumulator, ``digests`` and ``phashes``, gathered from the same decode as the
    rows (the data is read once for shards, every format and statistics)."""

    def __init__(self, config: ShardWriterConfig, *, num_shards, categories, examples=None):
        super().__init__()
        self._config = config
        self._num_shards = num_shards
        self._categories = categories
        self._examples = examples

    def expand(self, keyed: beam.PCollection[_KeyedPlans]) -> beam.pvalue.DoOutputsTuple:
        written = (
            keyed
            | "GroupByShard" >> beam.GroupByKey()
            | "ReadDecodeWrite"
            >> beam.ParDo(
                _WriteShardFn(self._config),
                num_shards=beam.pvalue.AsDict(self._num_shards),
                categories=beam.pvalue.AsDict(self._categories),
                **(
                    {"examples": beam.pvalue.AsSingleton(self._examples)}
                    if self._examples is not None
                    else {}
                ),
            ).with_outputs(REJECTED, STATS, DIGESTS, PHASHES, main="shards")
        )
        written.shards.element_type = ShardResult  # see ``_WriterOutput``
        return written
