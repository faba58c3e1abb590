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
conservation holds for every record kind (read == written + rejected); past
``max_rejected_fraction`` the run fails naming the commonest reasons. The rejected records are
written to the run folder before a failure, so they can be read, but the run is not published.
With a lake table (``transforms.runs.lake``): the run ``LATEST`` still names is registered first if
the table lacks it, then ``LATEST`` moves, then this run is registered.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import json
import logging
import platform
import time

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from coco_beam.schemas.parquet import CATEGORIES_SCHEMA
from coco_beam.schemas.records import KINDS
from coco_beam.schemas.state import STATE_VERSION
from coco_beam.transforms.runs.incremental import read_fingerprints, summarize_changes
from coco_beam.transforms.shards.sharding import shard_name
from coco_beam.transforms.stats.compare import compare_stats
from coco_beam.transforms.stats.gather import stats_document
from coco_beam.transforms.stats.tables import stats_tables, table_bytes

__all__ = ["PublishConfig", "PublishRun", "RunFailed", "library_versions", "write_statistics"]

_LOGGER = logging.getLogger(__name__)
MANIFEST_FORMAT = "coco-beam/1"


class RunFailed(RuntimeError):
    """The run's output is incomplete or untrustworthy; it was not published."""


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
    # The output's last complete run (``transforms.runs.incremental.PreviousRun``), if it has a
    # state: what changed since is written in the manifest, the statistics compared beside it.
    previous: object | None = None
    incremental: bool = False  # shards of ``previous`` may be reused (not ``--full``)
    # The lake table to register the run's shards in (``transforms.runs.lake.LakeConfig``), if any.
    lake: object | None = None

    def __post_init__(self):
        if not 0.0 <= self.max_rejected_fraction <= 1.0:
            raise ValueError("max_rejected_fraction must be between 0 and 1")

    @property
    def run_dir(self) -> str:
        return FileSystems.join(self.output, "runs", self.run_id)


def library_versions() -> dict:
    """Versions of everything that shapes the output's bytes."""
    import apache_beam
    import numpy
    import PIL
    import plotly
    import pycocotools

    try:
        from importlib.metadata import version

        coco_version = version("pycocotools")
    except Exception:  # noqa: BLE001 - an unusual install still publishes
        coco_version = getattr(pycocotools, "__version__", "unknown")
    return {
        "python": platform.python_version(),
        "apache-beam": apache_beam.__version__,
        "pyarrow": pa.__version__,
        "pycocotools": coco_version,
        "pillow": PIL.__version__,
        "numpy": numpy.__version__,
        "plotly": plotly.__version__,
    }


def _write_bytes(path: str, data: bytes, mime_type: str) -> None:
    with FileSystems.create(
        path, mime_type=mime_type, compression_type=CompressionTypes.UNCOMPRESSED
    ) as f:
        f.write(data)


def _categories_table(categories: dict) -> bytes:
    rows = [
        {
            "split": split,
            "id": cat["id"],
            "name": cat["name"],
            "supercategory": cat.get("supercategory"),
            "keypoints": cat.get("keypoints"),
            "isthing": cat.get("isthing"),
        }
        for split in sorted(categories)
        for cat in sorted(categories[split].values(), key=lambda c: c["id"])
    ]
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=CATEGORIES_SCHEMA), sink, compression="zstd")
    return sink.getvalue()


def write_statistics(folder: str, doc: dict, *, title: str) -> dict:
    """Writes ``stats.json``, its tables (``<table>.parquet``) and ``report.html`` into
    ``folder``; returns their manifest entry (paths relative to the run, sizes, SHA-256)."""
    from coco_beam.transforms.stats.report import render_report

    files = {"stats.json": (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()}
    for name, table in stats_tables(doc).items():
        files[f"{name}.parquet"] = table_bytes(table)
    files["report.html"] = render_report(doc, title=title).encode()
    mime = {"json": "application/json", "parquet": "application/octet-stream", "html": "text/html"}
    for name, data in files.items():
        _write_bytes(FileSystems.join(folder, name), data, mime[name.rsplit(".", 1)[1]])
    entries = {
        name: {
            "path": f"stats/{name}",
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        for name, data in files.items()
    }
    return {
        "path": "stats/stats.json",
        "sha256": entries["stats.json"]["sha256"],
        "report": "stats/report.html",
        "files": [entries[name] for name in sorted(entries)],
    }


def _choose_shards(shards, num_shards) -> tuple[list, list]:
    """One result per expected shard (a retried bundle may have left another); the rest."""
    by_key = collections.defaultdict(list)
    for shard in shards:
        by_key[(shard.split, shard.index)].append(shard)
    chosen, extra = [], []
    for split in sorted(num_shards):
        for index in range(num_shards[split]):
            results = sorted(by_key.get((split, index), []), key=lambda s: s.attempt)
            if not results:
                raise RunFailed(f"shard {index} of split {split} was not written")
            chosen.append(results[0])
            extra.extend(results[1:])
    return chosen, extra


def conservation(counts: dict, shards: list, rejected: list) -> dict:
    """``{kind: {read, written, rejected}}`` for every record kind."""
    written = collections.Counter()
    for shard in shards:
        written.update(shard.written)
    rejected_by_kind = collections.Counter(r.kind for r in rejected)
    return {
        kind: {
            "read": counts.get(("read", kind), 0),
            "written": written[kind],
            "rejected": rejected_by_kind[kind],
        }
        for kind in KINDS
    }


class _PublishFn(beam.DoFn):
    def __init__(self, config: PublishConfig):
        self._config = config

    def process(
        self, _, shards, rejected, counts, categories, num_shards, listed, stats, duplicates
    ):
        cfg = self._config
        run_dir = cfg.run_dir
        chosen, extra = _choose_shards(shards, num_shards)
        rejected = sorted(rejected, key=lambda r: (r.kind, r.split, r.key, r.reason, r.source))
        lines = "".join(json.dumps(r.to_json(), sort_keys=True) + "\n" for r in rejected)
        rejected_path = FileSystems.join(run_dir, "rejected", "rejected.jsonl")
        _write_bytes(rejected_path, lines.encode("utf-8"), "application/x-ndjson")

        totals = conservation(counts, chosen, rejected)
        broken = {k: v for k, v in totals.items() if v["read"] != v["written"] + v["rejected"]}
        if broken:
            raise RunFailed(f"records were lost or invented (read != written + rejected): {broken}")
        reasons = collections.Counter(r.reason for r in rejected)
        for kind, t in totals.items():
            if t["read"] and t["rejected"] / t["read"] > cfg.max_rejected_fraction:
                common = ", ".join(
                    f"{reason} ({n})"
                    for reason, n in collections.Counter(
                        r.reason for r in rejected if r.kind == kind
                    ).most_common(3)
                )
                raise RunFailed(
                    f"{t['rejected']} of {t['read']} {kind} records were rejected, more than "
                    f"--max-rejected-fraction={cfg.max_rejected_fraction}; commonest reasons: "
                    f"{common}. Rejected records: {rejected_path}"
                )

        temps = [f.temp_path for s in chosen for f in s.files]
        finals = [
            FileSystems.join(run_dir, "data", shard_name(s.split, s.index, s.num_shards, f.format))
            for s in chosen
            for f in s.files
        ]
        states = [s for s in chosen if s.state]
        temps += [s.state for s in states]
        finals += [FileSystems.join(run_dir, _state_path(s)) for s in states]
        if temps:
            for folder in ("data", "state") if states else ("data",):
                path = FileSystems.join(run_dir, folder)
                if not FileSystems.exists(path):
                    FileSystems.mkdirs(path)
            FileSystems.rename(temps, finals)
        _write_bytes(
            FileSystems.join(run_dir, "categories.parquet"),
            _categories_table(categories),
            "application/octet-stream",
        )
        stats_entry = None
        doc = None
        if cfg.statistics:
            doc = stats_document(stats, categories, duplicates)
            # The report names no run: the same input gives the same bytes in every run.
            stats_entry = write_statistics(
                FileSystems.join(run_dir, "stats"),
                doc,
                title="coco-beam statistics: " + ", ".join(sorted(categories)),
            )
        changes = _changes(cfg, chosen, doc, states)
        splits = {}
        for s in chosen:
            entry = splits.setdefault(
                s.split,
                {
                    "num_shards": s.num_shards,
                    "images": 0,
                    "annotations": 0,
                    "captions": 0,
                    "bytes": 0,
                },
            )
            entry["images"] += s.written.get("image", 0)
            entry["annotations"] += s.written.get("annotation", 0)
            entry["captions"] += s.written.get("caption", 0)
            entry["bytes"] += s.num_bytes
        manifest = {
            "format": MANIFEST_FORMAT,
            "run_id": cfg.run_id,
            "started": _iso(cfg.started),
            "finished": _iso(time.time()),
            "shards": [
                {
                    "path": f"data/{shard_name(s.split, s.index, s.num_shards, f.format)}",
                    "format": f.format,
                    "split": s.split,
                    "index": s.index,
                    "num_shards": s.num_shards,
                    "rows": s.num_rows,
                    "bytes": f.num_bytes,
                    "sha256": f.sha256,
                    "state": _state_path(s),
                    "fingerprint": s.fingerprint,
                    "reused": s.reused,
                }
                for s in chosen
                for f in s.files
            ],
            "state_version": STATE_VERSION,
            "changes": changes,
            "splits": splits,
            "stats": stats_entry,
            "counts": totals,
            "rejected_reasons": dict(sorted(reasons.items())),
            # Files in an images folder that no image record names: ignored, and counted (with
            # the files of images rejected before any file is opened, e.g. a duplicate id).
            "unlisted_files": {
                split: listed[split][0] - sum(s.files_found for s in chosen if s.split == split)
                for split in sorted(listed)
            },
            "sources": cfg.sources,
            "settings": cfg.settings,
            "versions": library_versions(),
        }
        _write_bytes(
            FileSystems.join(run_dir, "manifest.json"),
            (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode(),
            "application/json",
        )
        stale = [f.temp_path for s in extra for f in s.files]
        stale += [s.state for s in extra if s.state]
        if FileSystems.exists(cfg.temp_dir):
            stale.append(cfg.temp_dir)
        if stale:
            FileSystems.delete(stale)
        if cfg.lake is not None:
            # A previous run killed between moving LATEST and its lake commit is registered
            # first, so the table's history holds every published run, in order.
            from coco_beam.transforms.runs.lake import catch_up, register_run

            try:
                caught_up = catch_up(cfg.lake, cfg.output)
            except Exception as exc:  # noqa: BLE001 - this run's own commit below still runs
                # e.g. the previous run's files were deleted since: its snapshot is skipped.
                _LOGGER.warning("lake table: the previous run was not registered: %r", exc)
                caught_up = {}
            if caught_up:
                _LOGGER.info("lake table caught up with the previous run: %s", sorted(caught_up))
        _point_latest(cfg.output, cfg.run_id)
        if cfg.lake is not None:
            # Last of all: a run killed before this leaves the table's previous snapshot current.
            register_run(cfg.lake, manifest, run_dir)
        _LOGGER.info("published run %s: %d shards", cfg.run_id, len(chosen))
        yield manifest


def _state_path(shard) -> str:
    return "state/" + shard_name(shard.split, shard.index, shard.num_shards, "parquet")


def _changes(cfg: PublishConfig, chosen: list, doc: dict | None, states: list) -> dict | None:
    """What changed since the previous run (None without one): images added, removed and
    modified, shards reused and rewritten; and the statistics comparison, written beside the
    manifest as ``compare.json``."""
    previous = cfg.previous
    if previous is None:
        return None
    changes = {
        "previous_run": previous.run_id,
        "incremental": cfg.incremental and not previous.why,
        "why_not_incremental": (
            None if cfg.incremental and not previous.why else previous.why or "--full"
        ),
        "shards_reused": sum(s.reused for s in chosen),
        "shards_rewritten": sum(not s.reused for s in chosen),
    }
    old, missing = read_fingerprints(previous.states())
    new, _ = read_fingerprints([FileSystems.join(cfg.run_dir, _state_path(s)) for s in states])
    changes.update(summarize_changes(old, new))
    if missing:
        # Their images count as added: the previous run no longer says what they were.
        changes["previous_states_missing"] = len(missing)
    old_stats = FileSystems.join(previous.run_dir, "stats", "stats.json")
    if doc is not None and FileSystems.exists(old_stats):
        with FileSystems.open(old_stats, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            diff = compare_stats(json.loads(f.read()), doc)
        _write_bytes(
            FileSystems.join(cfg.run_dir, "compare.json"),
            (json.dumps(diff, indent=1, sort_keys=True) + "\n").encode(),
            "application/json",
        )
        changes["statistics_comparison"] = "compare.json"
    return changes


def _point_latest(output: str, run_id: str) -> None:
    """Moves ``OUT/LATEST`` to ``run_id`` in one step: the new pointer is written beside it and
    renamed over it (an atomic replace on a local disk; on an object store the copy that
    renames it is atomic), so a kill never leaves a reader an empty or partial pointer."""
    latest = FileSystems.join(output, "LATEST")
    staged = FileSystems.join(output, f".LATEST.{run_id}")
    _write_bytes(staged, (run_id + "\n").encode(), "text/plain")
    FileSystems.rename([staged], [latest])


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


class PublishRun(beam.PTransform):
    """Publishes a run once every shard is written; see the module docstring.

    Takes a pipeline root; ``shards``, ``rejected``, ``counts`` (summed per key),
    ``categories``, ``num_shards``, ``listed`` (files and bytes per images folder), ``stats``
    (one accumulator per split) and ``duplicates`` PCollections come as side inputs. Returns
    the manifest.
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
    ):
        super().__init__()
        self._config = config
        self._inputs = (shards, rejected, counts, categories, num_shards, listed, stats, duplicates)

    def expand(self, pbegin):
        shards, rejected, counts, categories, num_shards, listed, stats, duplicates = self._inputs
        return (
            pbegin
            | "Once" >> beam.Create([None])
            | "CheckAndPublish"
            >> beam.ParDo(
                _PublishFn(self._config),
                shards=beam.pvalue.AsList(shards),
                rejected=beam.pvalue.AsList(rejected),
                counts=beam.pvalue.AsDict(counts),
                categories=beam.pvalue.AsDict(categories),
                num_shards=beam.pvalue.AsDict(num_shards),
                listed=beam.pvalue.AsDict(listed),
                stats=beam.pvalue.AsDict(stats),
                duplicates=beam.pvalue.AsList(duplicates),
            )
        )
