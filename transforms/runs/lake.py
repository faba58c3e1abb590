"""The lake table: each published run becomes a new snapshot of Apache Iceberg tables.

Tables (in the namespace of ``LakeConfig``, ``coco_beam`` by default):

  * ``images``: the run's Parquet shards, partitioned by ``split`` (identity);
  * ``categories``: ``categories.parquet``;
  * ``stats_<table>``: each statistics table of ``stats/`` (``schemas.stats``).

Guarantees: files are registered where the run wrote them, never copied; each run commits one
snapshot per table whose data files are exactly that run's (an ``overwrite``: the previous
run's files leave the current snapshot and stay readable by snapshot id), with the run's id in
the snapshot's summary (``coco-beam.run-id``). ``images`` is committed last, after ``LATEST``
moved: a run killed before it leaves the previous snapshot current. Iceberg commits one table
at a time; a kill between two tables' commits leaves the statistics tables a run ahead of
``images``. Registering is idempotent (a table whose history has a snapshot of the run is left
alone: a retried publishing step commits once), and the next run, before moving ``LATEST``,
registers the run ``LATEST`` still names if the table lacks it (``catch_up``), so a run killed
after moving ``LATEST`` still gets its snapshot, in order, before the next run's. A new column
(a newer schema) is added to a table's schema before its files are registered.
"""

from __future__ import annotations

import dataclasses
import logging
import os

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

__all__ = ["LakeConfig", "catch_up", "lake_config", "register_run", "registered", "warm_up"]

SNAPSHOT_RUN_ID = "coco-beam.run-id"
_CATALOG_NAME = "coco_beam"


@dataclasses.dataclass(frozen=True)
class LakeConfig:
    """An Iceberg catalog (pyiceberg properties) and the namespace of the tables."""

    properties: dict
    namespace: str = "coco_beam"


def lake_config(
    output: str, catalog: str | None, properties: list[str], namespace: str, enabled: bool = True
) -> LakeConfig | None:
    """The catalog of a build: ``catalog`` as a URI (sqlite://, postgresql://, http(s)://,
    thrift://) or a pyiceberg catalog type (glue, bigquery...) plus ``KEY=VALUE`` properties;
    without one, a SQLite catalog in ``OUT/iceberg/`` for a local output, and none for an
    object-store output (SQLite needs a local file)."""
    if not enabled:
        return None
    props = {}
    for item in properties:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--iceberg-property takes KEY=VALUE, got {item!r}")
        props[key] = value
    if catalog:
        if "://" in catalog:
            props["uri"] = catalog
        else:
            props["type"] = catalog
        return LakeConfig(props, namespace)
    if FileSystems.get_scheme(output) is not None:
        return None
    folder = os.path.join(os.path.abspath(output), "iceberg")
    props.setdefault("uri", f"sqlite:///{folder}/catalog.db")
    props.setdefault("warehouse", f"file://{folder}")
    return LakeConfig(props, namespace)


def _uri(path: str) -> str:
    return path if FileSystems.get_scheme(path) is not None else "file://" + os.path.abspath(path)


def register_run(config: LakeConfig, manifest: dict, run_dir: str) -> dict:
    """Commits the run's files as new snapshots; returns ``{table: snapshot_id}`` of the tables
    it committed to. A table whose history has a snapshot of the run gets no new one."""
    catalog = _catalog(config)
    catalog.create_namespace_if_not_exists(config.namespace)
    run_id = manifest["run_id"]
    tables: dict[str, list[str]] = {}
    stats = manifest.get("stats") or {}
    for entry in stats.get("files", []):
        if entry["path"].endswith(".parquet"):
            name = entry["path"].rsplit("/", 1)[1][: -len(".parquet")]
            tables["stats_" + name] = [FileSystems.join(run_dir, entry["path"])]
    tables["categories"] = [FileSystems.join(run_dir, "categories.parquet")]
    shards = [s["path"] for s in manifest["shards"] if s["format"] == "parquet"]
    if shards:
        tables["images"] = [FileSystems.join(run_dir, p) for p in sorted(shards)]
    # pyiceberg warns once per column without Parquet statistics (the image bytes have none,
    # by design): not worth a line each.
    logging.getLogger("pyiceberg.io.pyarrow").setLevel(logging.ERROR)
    snapshots = {}
    for name in sorted(tables, key=lambda n: n == "images"):
        snapshot = _commit(
            catalog, f"{config.namespace}.{name}", tables[name], run_id, name == "images"
        )
        if snapshot is not None:
            snapshots[name] = snapshot
    return snapshots


def catch_up(config: LakeConfig, output: str) -> dict:
    """Registers the run ``OUT/LATEST`` names wherever the table's current snapshot is not yet
    that run's (a run killed between moving ``LATEST`` and its commit); returns ``{table:
    snapshot_id}`` of the tables it committed to, ``{}`` when there was nothing to do."""
    from coco_beam.transforms.runs.incremental import latest_run, read_manifest

    latest = latest_run(output)
    if latest is None:
        return {}
    run_dir = latest[1]
    manifest = read_manifest(run_dir)
    if not any(s["format"] == "parquet" for s in manifest["shards"]):
        return {}  # no Parquet shards: no images table to catch up with
    return register_run(config, manifest, run_dir)


def warm_up() -> None:
    """Imports pyiceberg's catalogs and Parquet readers (about half a second, once a process)."""
    import pyiceberg.catalog.sql  # noqa: F401 - the local default catalog
    import pyiceberg.io.pyarrow  # noqa: F401
    import pyiceberg.table  # noqa: F401


def _catalog(config: LakeConfig):
    from pyiceberg.catalog import load_catalog

    props = dict(config.properties)
    uri = props.get("uri", "")
    if uri.startswith("sqlite:///"):
        os.makedirs(os.path.dirname(uri[len("sqlite:///") :]), exist_ok=True)
    return load_catalog(_CATALOG_NAME, **props)


def registered(table, run_id: str) -> bool:
    """Whether any snapshot in the table's history is the run's: a run is committed once, even
    when publishing is retried after its commit."""
    return any(s.summary.get(SNAPSHOT_RUN_ID) == run_id for s in table.snapshots())


def _commit(catalog, identifier: str, paths: list[str], run_id: str, by_split: bool) -> int | None:
    """The id of the snapshot committed, or None where the table's history has the run's."""
    import pyarrow.parquet as pq
    from pyiceberg.exceptions import NoSuchTableError
    from pyiceberg.io.pyarrow import parquet_file_to_data_file
    from pyiceberg.table import TableProperties

    try:
        table = catalog.load_table(identifier)
    except NoSuchTableError:
        table = None
    else:
        if registered(table, run_id):
            return None
    uris = [_uri(p) for p in paths]
    with FileSystems.open(paths[0], compression_type=CompressionTypes.UNCOMPRESSED) as f:
        arrow_schema = pq.read_schema(f).remove_metadata()
    if table is None:
        table = catalog.create_table(identifier, schema=arrow_schema)
        if by_split:
            with table.update_spec() as spec:
                spec.add_identity("split")
    with table.transaction() as tx:
        with tx.update_schema() as update:
            update.union_by_name(arrow_schema)
        if tx.table_metadata.name_mapping() is None:
            mapping = tx.table_metadata.schema().name_mapping.model_dump_json()
            tx.set_properties(**{TableProperties.DEFAULT_NAME_MAPPING: mapping})
        current = list(table.scan().plan_files()) if table.current_snapshot() else []
        data_files = [parquet_file_to_data_file(table.io, tx.table_metadata, u) for u in uris]
        update = tx.update_snapshot(snapshot_properties={SNAPSHOT_RUN_ID: run_id})
        producer = update.overwrite() if current else update.fast_append()
        with producer:
            for task in current:
                producer.delete_data_file(task.file)
            for data_file in data_files:
                producer.append_data_file(data_file)
    return table.refresh().current_snapshot().snapshot_id
