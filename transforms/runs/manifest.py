"""A run's ``manifest.json``, built by pure functions from what the run wrote.

The manifest is the run's table of contents and the only file a reader needs to trust it:
every shard with its size and SHA-256, the counts that conservation was checked on, the
statistics files, what changed since the previous run, the settings and library versions
that shaped the bytes. ``build_manifest`` takes everything as keyword arguments and reads no
file and no clock, so the same inputs always give the same document.
"""

from __future__ import annotations

import collections
import platform
import time

from coco_beam.schemas.state import STATE_VERSION
from coco_beam.transforms.shards.formats import REGISTRY
from coco_beam.transforms.shards.sharding import shard_name

__all__ = [
    "MANIFEST_FORMAT",
    "build_manifest",
    "data_path",
    "iso_time",
    "library_versions",
    "shard_entries",
    "split_totals",
    "state_path",
    "unlisted_files",
]

MANIFEST_FORMAT = "coco-beam/1"


def library_versions() -> dict:
    """Versions of everything that shapes the output's bytes."""
    import apache_beam
    import numpy
    import PIL
    import plotly
    import pyarrow
    import pycocotools

    try:
        from importlib.metadata import version

        coco_version = version("pycocotools")
    except Exception:  # noqa: BLE001 - an unusual install still publishes
        coco_version = getattr(pycocotools, "__version__", "unknown")
    return {
        "python": platform.python_version(),
        "apache-beam": apache_beam.__version__,
        "pyarrow": pyarrow.__version__,
        "pycocotools": coco_version,
        "pillow": PIL.__version__,
        "numpy": numpy.__version__,
        "plotly": plotly.__version__,
    }


def iso_time(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def data_path(shard, file) -> str:
    """Where a shard's file of one format is published, relative to the run folder."""
    extension = REGISTRY[file.format].extension
    return "data/" + shard_name(shard.split, shard.index, shard.num_shards, extension)


def state_path(shard) -> str:
    """Where a shard's state file is published, relative to the run folder."""
    return "state/" + shard_name(shard.split, shard.index, shard.num_shards, "parquet")


def shard_entries(chosen: list) -> list[dict]:
    """One entry per file of every chosen shard, in shard then format order."""
    return [
        {
            "path": data_path(s, f),
            "format": f.format,
            "split": s.split,
            "index": s.index,
            "num_shards": s.num_shards,
            "rows": s.num_rows,
            "bytes": f.num_bytes,
            "sha256": f.sha256,
            "state": state_path(s),
            "fingerprint": s.fingerprint,
            "reused": s.reused,
        }
        for s in chosen
        for f in s.files
    ]


def split_totals(chosen: list) -> dict:
    """``{split: {num_shards, images, annotations, captions, bytes}}`` of what was written."""
    splits: dict = {}
    for s in chosen:
        entry = splits.setdefault(
            s.split,
            {"num_shards": s.num_shards, "images": 0, "annotations": 0, "captions": 0, "bytes": 0},
        )
        entry["images"] += s.written.get("image", 0)
        entry["annotations"] += s.written.get("annotation", 0)
        entry["captions"] += s.written.get("caption", 0)
        entry["bytes"] += s.num_bytes
    return splits


def unlisted_files(listed: dict, chosen: list) -> dict:
    """Files in an images folder that no image record names: ignored, and counted (with the
    files of images rejected before any file is opened, e.g. a duplicate id). ``listed``:
    ``{split: (files, bytes)}`` of each images folder."""
    found = collections.Counter()
    for s in chosen:
        found[s.split] += s.files_found
    return {split: listed[split][0] - found[split] for split in sorted(listed)}


def build_manifest(
    *,
    run_id: str,
    started: float,
    finished: float,
    chosen: list,
    totals: dict,
    rejected: list,
    listed: dict,
    stats: dict | None,
    changes: dict | None,
    volume: dict | None,
    sources: list,
    settings: dict,
    versions: dict,
) -> dict:
    """The manifest of a run whose checks passed: ``chosen`` shards (``ShardResult``),
    ``totals`` (``checks.conservation``), ``rejected`` records, ``listed`` folders, the
    ``stats`` entry (``files.write_statistics``, None without statistics), ``changes`` since
    the previous run (None without one) and the ``volume`` check (``volume.check_volume``)."""
    reasons = collections.Counter(r.reason for r in rejected)
    manifest = {
        "format": MANIFEST_FORMAT,
        "run_id": run_id,
        "started": iso_time(started),
        "finished": iso_time(finished),
        "shards": shard_entries(chosen),
        "state_version": STATE_VERSION,
        "changes": changes,
        "splits": split_totals(chosen),
        "stats": stats,
        "counts": totals,
        "rejected_reasons": dict(sorted(reasons.items())),
        "unlisted_files": unlisted_files(listed, chosen),
        "sources": sources,
        "settings": settings,
        "versions": versions,
    }
    if volume is not None:
        manifest["volume_check"] = volume
    return manifest
