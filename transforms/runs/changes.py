"""What publishing compares a run with: the output's previous run.

  * ``describe_changes``: the manifest's ``changes`` (images added, removed and modified since
    the previous complete run, shards reused and rewritten) and ``compare.json``, the
    statistics against the previous run's, written beside the manifest;
  * ``previous_figures``: the figures of the run ``LATEST`` names that the volume check
    (``volume``) compares with.

Both read the previous run's files only; neither fails a run.
"""

from __future__ import annotations

import json

from apache_beam.io.filesystems import FileSystems

from coco_beam.transforms.runs.files import read_bytes, read_latest, write_bytes
from coco_beam.transforms.runs.incremental import (
    read_fingerprints,
    read_manifest,
    summarize_changes,
)
from coco_beam.transforms.runs.manifest import state_path
from coco_beam.transforms.runs.volume import volume_figures
from coco_beam.transforms.stats.compare import compare_stats

__all__ = ["describe_changes", "previous_figures"]


def describe_changes(
    *, previous, incremental: bool, run_dir: str, chosen: list, doc: dict | None
) -> dict | None:
    """What changed since ``previous`` (``incremental.PreviousRun``; None without one, and then
    None): images added, removed and modified, shards reused and rewritten; and the statistics
    comparison with ``doc``, written into ``run_dir`` as ``compare.json``. ``incremental``:
    whether the build was allowed to reuse ``previous``'s shards."""
    if previous is None:
        return None
    incremental = incremental and not previous.why
    changes = {
        "previous_run": previous.run_id,
        "incremental": incremental,
        "why_not_incremental": None if incremental else previous.why or "--full",
        "shards_reused": sum(s.reused for s in chosen),
        "shards_rewritten": sum(not s.reused for s in chosen),
    }
    old, missing = read_fingerprints(previous.states())
    states = [FileSystems.join(run_dir, state_path(s)) for s in chosen if s.state]
    new, _ = read_fingerprints(states)
    changes.update(summarize_changes(old, new))
    if missing:
        # Their images count as added: the previous run no longer says what they were.
        changes["previous_states_missing"] = len(missing)
    old_stats = FileSystems.join(previous.run_dir, "stats", "stats.json")
    if doc is not None and FileSystems.exists(old_stats):
        diff = compare_stats(json.loads(read_bytes(old_stats)), doc)
        write_bytes(
            FileSystems.join(run_dir, "compare.json"),
            (json.dumps(diff, indent=1, sort_keys=True) + "\n").encode(),
            "application/json",
        )
        changes["statistics_comparison"] = "compare.json"
    return changes


def previous_figures(output: str) -> dict | None:
    """``volume.volume_figures`` of the run ``LATEST`` names; None before any run."""
    run_id = read_latest(output)
    if run_id is None:
        return None
    run_dir = FileSystems.join(output, "runs", run_id)
    manifest = read_manifest(run_dir)
    stats = None
    if manifest.get("stats"):
        stats = json.loads(read_bytes(FileSystems.join(run_dir, manifest["stats"]["path"])))
    return volume_figures(run_id, manifest["splits"], stats)
