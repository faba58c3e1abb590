"""Retention (``--keep-runs N``): after a run publishes, older run folders are deleted.

Kept: the newest ``N`` complete runs (a folder with a ``manifest.json``), the run ``LATEST``
names, and every folder newer than the oldest of those (a failed run's rejected records stay
readable until it ages out). Deleted: every other folder, complete or not (killed and failed
runs too), so the runs of an output are bounded by ``N`` plus the failures among them.

Never deleted: a file that a kept run or a kept lake snapshot still references. The lake
table's snapshots of the runs to delete are expired first (each snapshot holds exactly its
run's files, ``lake``), so no snapshot left references a deleted folder. A shard a rebuild
reused is a hard link on a local disk and a copy on an object store, so deleting the older
folder leaves the kept run's file intact.
"""

from __future__ import annotations

import logging
import os

from apache_beam.io.filesystems import FileSystems

__all__ = ["apply_retention", "list_runs", "runs_to_delete"]

_LOGGER = logging.getLogger(__name__)


def runs_to_delete(runs: dict[str, bool], keep: int, latest: str | None) -> list[str]:
    """The run ids to delete of ``runs`` (``{run_id: complete}``; ids sort by start time),
    keeping the newest ``keep`` complete ones, ``latest`` and every run newer than the oldest
    of those."""
    if keep < 1:
        raise ValueError("keep must be at least 1")
    kept = set(sorted(r for r, complete in runs.items() if complete)[-keep:])
    if latest is not None:
        kept.add(latest)
    if not kept:
        return []
    oldest = min(kept)
    return sorted(r for r in runs if r < oldest and r not in kept)


def list_runs(output: str) -> dict[str, bool]:
    """``{run_id: complete}`` of the run folders of ``output``."""
    runs_dir = FileSystems.join(output, "runs")
    if FileSystems.get_scheme(output) is None:
        if not os.path.isdir(runs_dir):
            return {}
        return {
            name: os.path.exists(os.path.join(runs_dir, name, "manifest.json"))
            for name in os.listdir(runs_dir)
            if os.path.isdir(os.path.join(runs_dir, name))
        }
    # An object store has no folders: a run is the prefix of its objects.
    runs: dict[str, bool] = {}
    prefix = runs_dir + "/"
    for meta in FileSystems.match([prefix + "**"])[0].metadata_list:
        run_id, _, rest = meta.path[len(prefix) :].partition("/")
        runs[run_id] = runs.get(run_id, False) or rest == "manifest.json"
    return runs


def _expire_snapshots(lake, deleted: set[str]) -> int:
    """Expires, in every table of the lake's namespace, the snapshots of the ``deleted`` runs
    (never a table's current one); returns how many."""
    from coco_beam.transforms.runs.lake import SNAPSHOT_RUN_ID, _catalog

    catalog = _catalog(lake)
    expired = 0
    for identifier in catalog.list_tables(lake.namespace):
        table = catalog.load_table(identifier)
        current = table.current_snapshot()
        ids = [
            s.snapshot_id
            for s in table.snapshots()
            if s.summary.get(SNAPSHOT_RUN_ID) in deleted
            and (current is None or s.snapshot_id != current.snapshot_id)
        ]
        if ids:
            table.maintenance.expire_snapshots().by_ids(ids).commit()
            expired += len(ids)
    return expired


def apply_retention(output: str, keep: int, *, latest: str, lake=None) -> list[str]:
    """Deletes the run folders ``runs_to_delete`` names, after expiring their snapshots in the
    ``lake`` (a ``LakeConfig``, if any); returns the run ids deleted. Safe to repeat."""
    deleted = runs_to_delete(list_runs(output), keep, latest)
    if not deleted:
        return []
    if lake is not None:
        _expire_snapshots(lake, set(deleted))
    local = FileSystems.get_scheme(output) is None
    folders = [FileSystems.join(output, "runs", r) + ("" if local else "/") for r in deleted]
    FileSystems.delete(folders)
    _LOGGER.info("deleted %d run folders beyond the newest %d runs", len(deleted), keep)
    return deleted
