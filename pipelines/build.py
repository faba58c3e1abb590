"""The ``coco-beam build`` pipeline: COCO annotations and images to published Parquet shards.

Composition only; every step is a transform of ``transforms/``::

    ReadCocoAnnotations -> JoinAnnotationsToImages -> AssignShards
        -> WriteShards (the only stage that reads image bytes; it rasterizes each image's
           masks and decodes it in its decoder children, on every core, and gathers the
           statistics from the same decode) -> GatherStatistics, FindNearDuplicates
        -> PublishRun

Before the shard shuffle runs only what has to see every record: parsing and checking the
records, the join's duplicate, orphan and category checks, the shard assignment, and beside
it ``PreselectExamples`` (which images can be the report's examples, from ids and areas).

Image bytes never cross a shuffle: ids, paths, annotations and masks are grouped, and the
bytes are read after the last shuffle, in the stage that writes them.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import time

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import (
    DirectOptions,
    PipelineOptions,
    StandardOptions,
    WorkerOptions,
)
from apache_beam.runners.runner import PipelineState

from coco_beam.pipelines.layout import describe_sources, find_sources
from coco_beam.pipelines.options import BuildOptions
from coco_beam.transforms.annotations.join import JoinAnnotationsToImages
from coco_beam.transforms.annotations.read import ReadCocoAnnotations
from coco_beam.transforms.runs.incremental import PreviousBuild, load_previous
from coco_beam.transforms.runs.lake import lake_config
from coco_beam.transforms.runs.lease import hold_lease
from coco_beam.transforms.runs.publish import PublishConfig, PublishRun, library_versions
from coco_beam.transforms.shards.assign import AssignShards
from coco_beam.transforms.shards.write import (
    DIGESTS,
    PHASHES,
    STATS,
    ShardWriterConfig,
    WriteShards,
)
from coco_beam.transforms.stats.gather import GatherStatistics, PreselectExamples
from coco_beam.transforms.stats.near_duplicates import FindNearDuplicates

__all__ = ["BuildPlan", "default_runner", "plan_build", "run"]

_LOGGER = logging.getLogger(__name__)
# Beam's worker runs as ``python -m apache_beam.runners.worker.sdk_worker_main``: its module
# logger is ``__main__``.
_WORKER_MAIN_LOGGER = "__main__"


@dataclasses.dataclass(frozen=True)
class BuildPlan:
    """What one run reads and where it writes, decided before the pipeline is built."""

    sources: list
    ignored: list
    output: str
    run_id: str
    started: float

    @property
    def run_dir(self) -> str:
        return FileSystems.join(self.output, "runs", self.run_id)

    @property
    def temp_dir(self) -> str:
        return FileSystems.join(self.run_dir, ".tmp")


def new_run_id(now: float) -> str:
    """Sortable by time, unique across concurrent runs."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now)) + "-" + secrets.token_hex(3)


def plan_build(options: BuildOptions) -> BuildPlan:
    if not options.output:
        raise ValueError("--output is required")
    sources, ignored = find_sources(options.coco_root, options.annotations, options.images)
    now = time.time()
    return BuildPlan(sources, ignored, options.output.rstrip("/"), new_run_id(now), now)


def find_previous(options: BuildOptions, plan: BuildPlan) -> PreviousBuild:
    """The run's settings, the output's last complete run (or None) and that run again if this
    one rebuilds from it (None for a full build)."""
    settings = {
        "num_shards": options.num_shards,
        "shard_bytes": options.shard_bytes,
        "row_group_bytes": options.row_group_bytes,
        "max_pixels": options.max_pixels,
        "max_rejected_fraction": options.max_rejected_fraction,
        "compression": ShardWriterConfig.compression,
        "formats": list(options.formats),
        "statistics": options.statistics,
        "tfrecord_masks": options.tfrecord_masks,
        "panoptic_semantic": options.panoptic_semantic,
    }
    if "yolo" in options.formats:
        settings["yolo_task"] = options.yolo_task
    if options.statistics and not options.near_duplicates:
        # Named only when off, so that outputs built before the option stay reusable; a state
        # without hashes is never reused by a run that searches.
        settings["near_duplicates"] = False
    previous = None
    if options.formats:
        previous, why = load_previous(plan.output, settings, library_versions())
        _LOGGER.info("previous run: %s", previous.run_id if previous else why)
    reusable = previous if previous is not None and not previous.why and not options.full else None
    return PreviousBuild(settings=settings, previous=previous, reusable=reusable)


def build_pipeline(
    pipeline: beam.Pipeline, options: BuildOptions, plan: BuildPlan, previous_run: PreviousBuild
):
    """Adds the build to ``pipeline``; returns the manifest PCollection. ``previous_run``:
    what ``find_previous`` said (the runner is chosen from it first)."""
    images_dirs = {s.split: s.images_dir for s in plan.sources}
    workers = pipeline.options.view_as(DirectOptions).direct_num_workers or 1
    read = pipeline | "ReadCocoAnnotations" >> ReadCocoAnnotations(plan.sources, workers)
    joined = read | (
        "JoinAnnotationsToImages" >> JoinAnnotationsToImages(images_dirs, options.progress_dir)
    )
    assigned = joined.plans | "AssignShards" >> AssignShards(
        images_dirs, options.shard_bytes, options.num_shards, image_counts=read["image_counts"]
    )
    lake = lake_config(
        plan.output,
        options.iceberg_catalog,
        options.iceberg_properties,
        options.iceberg_namespace,
        enabled=_registers(options),
    )
    writer_config = ShardWriterConfig(
        temp_dir=plan.temp_dir,
        row_group_bytes=options.row_group_bytes,
        io_threads=options.io_threads,
        max_pixels=options.max_pixels,
        progress_dir=options.progress_dir,
        formats=tuple(options.formats),
        statistics=options.statistics,
        near_duplicates=options.near_duplicates,
        tfrecord_masks=options.tfrecord_masks,
        panoptic_semantic=options.panoptic_semantic,
        yolo_task=options.yolo_task,
        previous=previous_run.reusable,
        isolate_decoders=options.isolate_decoders,
        prepare=tuple(
            need
            for need, wanted in (("report", options.statistics), ("lake", lake is not None))
            if wanted
        ),
    )
    # The report's example candidates, from ids and areas, before any image is read.
    examples = (
        joined.plans | "PreselectExamples" >> PreselectExamples() if options.statistics else None
    )
    written = assigned["keyed"] | "WriteShards" >> WriteShards(
        writer_config,
        num_shards=assigned["num_shards"],
        categories=read["categories"],
        examples=examples,
    )
    gathered = (written[STATS], written[DIGESTS]) | "GatherStatistics" >> GatherStatistics()
    near_duplicates = (
        written[PHASHES] | "FindNearDuplicates" >> FindNearDuplicates()
        if options.statistics and options.near_duplicates
        else None
    )
    rejected = (
        read["rejected"],
        joined.rejected,
        written.rejected,
    ) | "AllRejected" >> beam.Flatten()
    counts = (
        (read["counts"], joined.counts)
        | "AllCounts" >> beam.Flatten()
        | "SumCounts" >> beam.CombinePerKey(sum)
    )
    publish_config = PublishConfig(
        output=plan.output,
        run_id=plan.run_id,
        temp_dir=plan.temp_dir,
        max_rejected_fraction=options.max_rejected_fraction,
        settings=previous_run.settings,
        sources=describe_sources(plan.sources, plan.ignored),
        started=plan.started,
        statistics=options.statistics,
        near_duplicates=options.near_duplicates,
        previous=previous_run.previous,
        incremental=previous_run.reusable is not None,
        lake=lake,
        max_shrink=options.max_shrink,
        keep_runs=options.keep_runs,
        leased=True,  # ``run`` holds the output's lease while the pipeline runs
    )
    return pipeline | "PublishRun" >> PublishRun(
        publish_config,
        shards=written.shards,
        rejected=rejected,
        counts=counts,
        categories=read["categories"],
        num_shards=assigned["num_shards"],
        listed=assigned["listed"],
        stats=gathered["stats"],
        duplicates=gathered["duplicates"],
        near_duplicates=near_duplicates,
    )


def _registers(options: BuildOptions) -> bool:
    """Whether the run is registered in the lake table: the table is the Parquet output's, so a
    build writing only TFRecord registers its statistics only in a catalog it is given, and
    ``coco-beam stats`` (no shards) never."""
    if not options.iceberg or not options.formats:
        return False
    return "parquet" in options.formats or bool(options.iceberg_catalog)


def default_runner(options: PipelineOptions, argv: list[str], *, rebuilding: bool = False):
    """The runner when none is named: Beam's FnApiRunner (what the DirectRunner runs batch
    jobs on), in this process, unless ``--direct_num_workers`` (then one worker process each)
    or ``--direct_running_mode`` say otherwise; ``rebuilding`` (an incremental rebuild): one
    worker process per core. Chosen explicitly so the DirectRunner never tries to download its
    Prism runner first.

    One Beam worker is enough to keep every core busy: decoding, the bulk of a build's CPU,
    runs in child processes (or, with ``--no-isolate-decoders``, threads that release the
    GIL), several at once. Measured on 2 cores (README, Performance), it is about as fast as
    one worker process per core in a third of the memory: worker processes each hold their
    share of the annotation index, and the launcher holds every collection that crosses a
    stage boundary once more to hand it over. A rebuild is the exception: most of its work is
    rewriting shards from rows it already has, in Python, which only more processes spread."""
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    given = {arg.split("=", 1)[0] for arg in argv}
    direct = options.view_as(DirectOptions)
    if "--direct_num_workers" not in given:
        direct.direct_num_workers = (os.cpu_count() or 1) if rebuilding else 1
    if "--direct_running_mode" not in given:
        multi = direct.direct_num_workers != 1
        direct.direct_running_mode = "multi_processing" if multi else "in_memory"
    worker = options.view_as(WorkerOptions)
    if worker.sdk_harness_log_level_overrides is None:
        # Local worker processes warn at start that no pickled main session was staged (this
        # project never uses one: workers import the installed package) and that they cannot
        # parse this project's options (they need none: transforms carry their config). They
        # also log a failing bundle's traceback, which the launcher raises anyway.
        worker.sdk_harness_log_level_overrides = {
            _WORKER_MAIN_LOGGER: "ERROR",
            "apache_beam.options.pipeline_options": "ERROR",
            "apache_beam.runners.common": "CRITICAL",
            "apache_beam.runners.worker.sdk_worker": "CRITICAL",
        }
    # Workers read their pipeline options (filesystem credentials, log levels) from the
    # provision info, as Beam's DirectRunner hands them over.
    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    return fn_runner.FnApiRunner(
        provision_info=fn_runner.ExtendedProvisionInfo(
            beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded)
        )
    )


def run(argv=None, test_pipeline=None, *, statistics_only=False):
    """Builds and runs the pipeline; returns ``(PipelineResult, BuildPlan)``.
    ``statistics_only``: read and decode everything, write the statistics and no shards (what
    ``coco-beam stats`` runs)."""
    argv = list(argv or [])
    options = PipelineOptions(argv)
    # The launcher lists inputs before the pipeline exists; its storage access must honour the
    # same options (project, credentials, impersonation) as the workers'.
    FileSystems.set_options(options)
    build_options = options.view_as(BuildOptions)
    if statistics_only:
        if not build_options.statistics:
            raise ValueError("--no-statistics leaves coco-beam stats nothing to do")
        build_options.formats = []
    if options.view_as(DirectOptions).direct_running_mode == "multi_threading":
        # Measured: 1 run in 4 of 3,200 images lost a few images between the shard writers and
        # the publishing step in this mode (the conservation check failed those runs, so
        # nothing wrong was published); in_memory and multi_processing never did. The loss is
        # Beam's, with Beam alone: docs/repro/beam_multi_threading_loss.py.
        raise ValueError(
            "--direct_running_mode=multi_threading is not supported: in that mode Beam's local "
            "runner loses elements (a race in apache_beam/runners/worker/data_plane.py: "
            "TimeBasedBufferingClosableOutputStream is flushed by a timer thread while the "
            "bundle's thread still writes, and what is written between its get() and _clear() "
            "is dropped); use in_memory (the default) or multi_processing, or a runner with no "
            "time-based flush (Flink, Spark, Prism, Dataflow)"
        )
    plan = plan_build(build_options)
    # One run at a time writes an output: the lease is held from before the output's last run
    # is read until this run ends, published or failed (``transforms.runs.lease``).
    with hold_lease(plan.output, plan.run_id, timeout=build_options.lease_timeout) as lease:
        previous_run = find_previous(build_options, plan)
        if test_pipeline is not None:
            pipeline = test_pipeline
        else:
            runner = None
            if options.view_as(StandardOptions).runner is None:
                rebuilding = previous_run.reusable is not None
                runner = default_runner(options, argv, rebuilding=rebuilding)
            pipeline = beam.Pipeline(runner=runner, options=options)
        build_pipeline(pipeline, build_options, plan, previous_run)
        _LOGGER.info(
            "run %s: %d annotation files -> %s", plan.run_id, len(plan.sources), plan.run_dir
        )
        result = pipeline.run()
        result.wait_until_finish()
        if not PipelineState.is_terminal(result.state):
            # The job outlives this launcher (a launch that does not wait): its publishing
            # step releases the lease.
            lease.detach()
    return result, plan
