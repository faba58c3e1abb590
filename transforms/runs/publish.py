"""``PublishRun``: the last step of a run. Checks, renames, writes the manifest, moves LATEST.

Layout of an output folder::

    OUT/LATEST                          the id of the last complete run (written last of all)
    OUT/runs/<run_id>/data/<split>-SSSSS-of-NNNNN.parquet
    OUT/runs/<run_id>/state/<split>-SSSSS-of-NNNNN.parquet  what a rebuild compares with
    OUT/runs/<run_id>/categories.parquet
    OUT/runs/<run_id>/rejected/rejected.jsonl
    OUT/runs/<run_id>/stats/stats.json   dataset statistics (see ``transforms.stats.gather``)
    OUT/runs/<run_id>/stats/<table>.parquet  the same figures as tables (``schemas.stats``)
    OUT/runs/<run_id>/stats/report.html  the same figures as a page to read (offline)
    OUT/runs/<run_id>/compare.json      statistics against the previous run's, if there is one
    OUT/runs/<run_id>/manifest.json     written after everything else in the run folder

Guarantees: nothing is renamed or published unless every shard of every split is present and
conservation holds for every record kind (read == written + rejected, ``checks``); past
``max_rejected_fraction`` the run fails naming the commonest reasons; against the run ``LATEST``
names, a split that disappeared or shrank past ``max_shrink``, or a category left without
instances, fails it too (``volume``; the manifest's ``volume_check`` says what was compared).
The rejected records are written to the run folder before a failure, so they can be read, but
the run is not published. With a lake table (``transforms.runs.lake``): the run ``LATEST``
still names is registered first if the table lacks it, then ``LATEST`` moves (only while the
run's lease, ``lease``, still names it), then this run is registered; then ``keep_runs``
deletes the oldest run folders (``retention``).

Publishing is idempotent, because a runner retries a failed bundle: a retry after a partial
rename finishes the renames (``files.move_into_place``), and ``LATEST`` moves and the lake
commit happens once per run id. The checks and the manifest are pure functions (``checks``,
``manifest``, ``volume``); this module reads and writes, in order.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from coco_beam.schemas.records import ShardResult
from coco_beam.transforms.runs.changes import describe_changes, previous_figures
from coco_beam.transforms.runs.checks import (
    RunFailed,
    check_conservation,
    check_rejected_fraction,
    choose_shards,
    conservation,
)
from coco_beam.transforms.runs.files import (
    categories_table,
    delete_existing,
    move_into_place,
    point_latest,
    read_latest,
    write_bytes,
    write_statistics,
)
from coco_beam.transforms.runs.incremental import read_manifest
from coco_beam.transforms.runs.lease import check_lease, release_lease
from coco_beam.transforms.runs.manifest import build_manifest, library_versions, split_totals
from coco_beam.transforms.runs.pictures import report_pictures
from coco_beam.transforms.runs.retention import apply_retention
from coco_beam.transforms.runs.volume import (
    DEFAULT_MAX_SHRINK,
    check_volume,
    volume_failure,
    volume_figures,
)
from coco_beam.transforms.stats.gather import stats_document
from coco_beam.transforms.stats.near_duplicates import distinct_pairs, member_paths

__all__ = [
    "PublishConfig",
    "PublishInputs",
    "PublishRun",
    "RunFailed",
    "gather_inputs",
    "library_versions",
    "publish_run",
    "write_statistics",
]

_LOGGER = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PublishConfig:
    output: str
    run_id: str
    temp_dir: str
    max_rejected_fraction: float
    settings: dict
    sources: list
    started: float
    statistics: bool = True  # write stats/ (off: the manifest's "stats" is null)
    # Near-duplicates were searched (off: stats.json's ``near_duplicates`` is null).
    near_duplicates: bool = True
    # The output's last complete run (``transforms.runs.incremental.PreviousRun``), if it has a
    # state: what changed since is written in the manifest, the statistics compared beside it.
    previous: object | None = None
    incremental: bool = False  # shards of ``previous`` may be reused (not ``--full``)
    # The lake table to register the run's shards in (``transforms.runs.lake.LakeConfig``), if any.
    lake: object | None = None
    # The largest fall of a split's images since the last run that still publishes (``volume``).
    max_shrink: float = DEFAULT_MAX_SHRINK
    # Complete runs to keep after publishing (``retention``); None keeps every one.
    keep_runs: int | None = None
    # Whether the run holds the output's lease (``lease``): it then moves LATEST only while the
    # lease still names it.
    leased: bool = False

    def __post_init__(self):
        if not 0.0 <= self.max_rejected_fraction <= 1.0:
            raise ValueError("max_rejected_fraction must be between 0 and 1")
        if not 0.0 <= self.max_shrink <= 1.0:
            raise ValueError("max_shrink must be between 0 and 1")
        if self.keep_runs is not None and self.keep_runs < 1:
            raise ValueError("keep_runs must be at least 1")

    @property
    def run_dir(self) -> str:
        return FileSystems.join(self.output, "runs", self.run_id)


# A frozen dataclass rather than a NamedTuple: Beam would infer a schema (and a row coder) for a
# NamedTuple, which its fields (lists of records, accumulators) do not fit.
@dataclasses.dataclass(frozen=True, kw_only=True)
class PublishInputs:
    """Everything the run produced that publishing reads, as one element."""

    shards: list  # ShardResult of every attempt of every shard
    rejected: list  # Rejection
    counts: dict  # ("read", kind) -> records read
    categories: dict  # split -> {category id: category}
    num_shards: dict  # split -> shards
    listed: dict  # split -> (files, bytes) of its images folder
    stats: dict  # split -> statistics accumulator
    duplicates: list  # one dict per content hash shared by several images
    # (member, member, distance) pairs of near-duplicate images (``stats.near_duplicates``)
    near_duplicates: list = dataclasses.field(default_factory=list)


def gather_inputs(
    _,
    *,
    shards,
    rejected,
    counts,
    categories,
    num_shards,
    listed,
    stats,
    duplicates,
    near_duplicates=(),
) -> PublishInputs:
    """The side inputs of ``PublishRun`` as one ``PublishInputs`` (``near_duplicates``: the
    packed batches of ``FindNearDuplicates``)."""
    return PublishInputs(
        shards=list(shards),
        rejected=list(rejected),
        counts=dict(counts),
        categories=dict(categories),
        num_shards=dict(num_shards),
        listed=dict(listed),
        stats=dict(stats),
        duplicates=list(duplicates),
        near_duplicates=distinct_pairs(near_duplicates),
    )


def publish_run(config: PublishConfig, inputs: PublishInputs) -> dict:
    """Checks the run, publishes it and returns its manifest; see the module docstring. Run
    again with the same inputs (a retry), it completes what an earlier attempt left undone and
    publishes nothing twice."""
    # True when an earlier attempt published the run and failed after moving LATEST.
    published = read_latest(config.output) == config.run_id
    manifest = read_manifest(config.run_dir) if published else _prepare(config, inputs)
    _register_previous(config)
    if config.leased and not published:
        check_lease(config.output, config.run_id)
    point_latest(config.output, config.run_id)
    if config.lake is not None:
        from coco_beam.transforms.runs.lake import register_run

        # After LATEST: a run killed before this leaves the table's previous snapshot current.
        register_run(config.lake, manifest, config.run_dir)
    if not published:
        _LOGGER.info("published run %s: %d shard files", config.run_id, len(manifest["shards"]))
    if config.keep_runs is not None:
        apply_retention(config.output, config.keep_runs, latest=config.run_id, lake=config.lake)
    if config.leased:
        # Published: the output is free for the next run, even where the launcher that took
        # the lease did not wait for the job.
        release_lease(config.output, config.run_id)
    return manifest


def _prepare(config: PublishConfig, inputs: PublishInputs) -> dict:
    """Checks, renames and writes everything in the run folder; the manifest last."""
    run_dir = config.run_dir
    chosen, extra = choose_shards(inputs.shards, inputs.num_shards)
    rejected = sorted(inputs.rejected, key=lambda r: (r.kind, r.split, r.key, r.reason, r.source))
    lines = "".join(json.dumps(r.to_json(), sort_keys=True) + "\n" for r in rejected)
    rejected_path = FileSystems.join(run_dir, "rejected", "rejected.jsonl")
    write_bytes(rejected_path, lines.encode("utf-8"), "application/x-ndjson")
    totals = conservation(inputs.counts, chosen, rejected)
    check_conservation(totals)
    check_rejected_fraction(
        totals, rejected, config.max_rejected_fraction, rejected_path=rejected_path
    )
    doc = None
    if config.statistics:
        doc = stats_document(
            inputs.stats,
            inputs.categories,
            inputs.duplicates,
            inputs.near_duplicates if config.near_duplicates else None,
        )
    volume = check_volume(
        previous_figures(config.output),
        volume_figures(config.run_id, split_totals(chosen), doc),
        config.max_shrink,
    )
    if volume["verdict"] == "failed":
        raise RunFailed(volume_failure(volume))

    move_into_place(run_dir, chosen)
    yolo = None
    if "yolo" in config.settings.get("formats", ()):
        from coco_beam.transforms.shards.yolo import publish_layout

        try:
            yolo = publish_layout(
                run_dir,
                chosen,
                inputs.categories,
                task=config.settings["yolo_task"],
                previous_dir=config.previous.run_dir if config.previous is not None else None,
            )
        except ValueError as exc:
            raise RunFailed(f"the YOLO layout cannot be published: {exc}") from exc
    write_bytes(
        FileSystems.join(run_dir, "categories.parquet"),
        categories_table(inputs.categories),
        "application/octet-stream",
    )
    stats_entry = None
    if doc is not None:
        # The report names no run: the same input gives the same bytes in every run.
        stats_entry = write_statistics(
            FileSystems.join(run_dir, "stats"),
            doc,
            title="coco-beam statistics: " + ", ".join(sorted(inputs.categories)),
            # the examples' thumbnails, and the duplicate groups' images read back
            pictures=report_pictures(doc, inputs.stats, member_paths(inputs.near_duplicates)),
        )
    manifest = build_manifest(
        run_id=config.run_id,
        started=config.started,
        finished=time.time(),
        chosen=chosen,
        totals=totals,
        rejected=rejected,
        listed=inputs.listed,
        stats=stats_entry,
        changes=describe_changes(
            previous=config.previous,
            incremental=config.incremental,
            run_dir=run_dir,
            chosen=chosen,
            doc=doc,
        ),
        volume=volume,
        sources=config.sources,
        settings=config.settings,
        versions=library_versions(),
    )
    if yolo is not None:
        manifest["yolo"] = yolo  # the layout beside the shards (``shards.yolo``)
    write_bytes(
        FileSystems.join(run_dir, "manifest.json"),
        (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode(),
        "application/json",
    )
    stale = [f.temp_path for s in extra for f in s.files]
    stale += [s.state for s in extra if s.state]
    delete_existing([*stale, config.temp_dir])
    return manifest


def _register_previous(config: PublishConfig) -> None:
    """Registers the run ``LATEST`` names if the lake table lacks it (a run killed between
    moving ``LATEST`` and its commit), so the table's history holds every published run, in
    order."""
    if config.lake is None:
        return
    from coco_beam.transforms.runs.lake import catch_up

    try:
        caught_up = catch_up(config.lake, config.output)
    except Exception as exc:  # noqa: BLE001 - this run's own commit still runs
        # e.g. the previous run's files were deleted since: its snapshot is skipped.
        _LOGGER.warning("lake table: the previous run was not registered: %r", exc)
        return
    if caught_up:
        _LOGGER.info("lake table caught up with the previous run: %s", sorted(caught_up))


@beam.typehints.with_input_types(PublishInputs)
@beam.typehints.with_output_types(dict)
class _PublishFn(beam.DoFn):
    def __init__(self, config: PublishConfig):
        self._config = config

    def process(self, inputs: PublishInputs):
        yield publish_run(self._config, inputs)


def _pass_through(shard: ShardResult) -> ShardResult:
    return shard


class PublishRun(beam.PTransform):
    """Publishes a run once every shard is written; see the module docstring.

    Takes a pipeline root; ``shards`` (``ShardResult``), ``rejected``, ``counts`` (summed per
    key), ``categories``, ``num_shards``, ``listed`` (files and bytes per images folder),
    ``stats`` (one accumulator per split), ``duplicates`` and ``near_duplicates``
    (``FindNearDuplicates``' packed pairs, optional) PCollections come as side inputs,
    gathered into one ``PublishInputs``. Returns the manifest, once. Fails the pipeline with
    ``RunFailed`` where a check fails; nothing is published then.
    """

    def __init__(
        self,
        config: PublishConfig,
        *,
        shards,
        rejected,
        counts,
        categories,
        num_shards,
        listed,
        stats,
        duplicates,
        near_duplicates=None,
    ):
        super().__init__()
        self._config = config
        self._inputs = dict(
            shards=shards,
            rejected=rejected,
            counts=counts,
            categories=categories,
            num_shards=num_shards,
            listed=listed,
            stats=stats,
            duplicates=duplicates,
        )
        if near_duplicates is not None:
            self._inputs["near_duplicates"] = near_duplicates

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection[dict]:
        i = self._inputs
        # The shard results usually come straight from the writer's multi-output ParDo. Beam's
        # BundleBasedDirectRunner fills a side input fed by such a step with the bundles of
        # every one of its outputs (statistics, digests, rejections among the shard results):
        # one single-output step in between gives the side input the shard results only.
        shards = i["shards"] | "OnlyShardResults" >> beam.Map(_pass_through).with_input_types(
            ShardResult
        ).with_output_types(ShardResult)
        near = {}
        if "near_duplicates" in i:
            near["near_duplicates"] = beam.pvalue.AsList(i["near_duplicates"])
        return (
            pbegin
            | "Once" >> beam.Create([None])
            | "GatherInputs"
            >> beam.Map(
                gather_inputs,
                shards=beam.pvalue.AsList(shards),
                rejected=beam.pvalue.AsList(i["rejected"]),
                counts=beam.pvalue.AsDict(i["counts"]),
                categories=beam.pvalue.AsDict(i["categories"]),
                num_shards=beam.pvalue.AsDict(i["num_shards"]),
                listed=beam.pvalue.AsDict(i["listed"]),
                stats=beam.pvalue.AsDict(i["stats"]),
                duplicates=beam.pvalue.AsList(i["duplicates"]),
                **near,
            ).with_output_types(PublishInputs)
            | "CheckAndPublish" >> beam.ParDo(_PublishFn(self._config))
        )
