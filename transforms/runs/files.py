"""What publishing writes and moves, on any Beam filesystem, safe to repeat.

A runner retries a failed bundle, so every step here may run twice for one run:

  * ``move_into_place`` renames the shards from their temporary names; a file already at its
    final name whose SHA-256 is the expected one (an earlier attempt renamed it) counts as
    done, so a retry after a partial rename finishes the job instead of failing on sources
    that are gone;
  * ``point_latest`` moves ``OUT/LATEST`` in one atomic replace, and not at all when it already
    names the run;
  * the other files (rejected records, categories, statistics) are rewritten with the same
    bytes, which the pipeline's determinism guarantees.
"""

from __future__ import annotations

import hashlib
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from coco_beam.schemas.parquet import CATEGORIES_SCHEMA
from coco_beam.transforms.runs.checks import RunFailed
from coco_beam.transforms.runs.manifest import data_path, state_path
from coco_beam.transforms.runtime.faults import maybe_fail
from coco_beam.transforms.stats.tables import stats_tables, table_bytes

__all__ = [
    "categories_table",
    "delete_existing",
    "move_into_place",
    "point_latest",
    "read_bytes",
    "read_latest",
    "sha256_of",
    "write_bytes",
    "write_statistics",
]

_CHUNK = 8 << 20  # bytes read at a time when hashing a published shard


def write_bytes(path: str, data: bytes, mime_type: str) -> None:
    with FileSystems.create(
        path, mime_type=mime_type, compression_type=CompressionTypes.UNCOMPRESSED
    ) as f:
        f.write(data)


def read_bytes(path: str) -> bytes:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return f.read()


def sha256_of(path: str) -> str | None:
    """The SHA-256 of the file at ``path``, or None where there is none."""
    if not FileSystems.exists(path):
        return None
    digest = hashlib.sha256()
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def delete_existing(paths: list[str]) -> None:
    """Deletes those of ``paths`` that exist (a retry finds some deleted already)."""
    present = [p for p in paths if FileSystems.exists(p)]
    if present:
        FileSystems.delete(present)


def categories_table(categories: dict) -> bytes:
    """``categories.parquet``: every split's categories, in split and id order."""
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


def write_statistics(folder: str, doc: dict, *, title: str, pictures: dict | None = None) -> dict:
    """Writes ``stats.json``, its tables (``<table>.parquet``) and ``report.html`` into
    ``folder``; returns their manifest entry (paths relative to the run, sizes, SHA-256).
    ``pictures``: the report's thumbnails (``transforms.runs.pictures``)."""
    from coco_beam.transforms.stats.report import render_report

    files = {"stats.json": (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()}
    for name, table in stats_tables(doc).items():
        files[f"{name}.parquet"] = table_bytes(table)
    files["report.html"] = render_report(doc, title=title, pictures=pictures).encode()
    mime = {"json": "application/json", "parquet": "application/octet-stream", "html": "text/html"}
    for name, data in files.items():
        write_bytes(FileSystems.join(folder, name), data, mime[name.rsplit(".", 1)[1]])
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


def _moves(run_dir: str, chosen: list) -> list[tuple[str, str, str | None]]:
    """``(temporary path, final path, expected SHA-256)`` of every file of the chosen shards,
    shard after shard; a state file's digest is not known (None)."""
    moves = []
    for s in chosen:
        moves += [
            (f.temp_path, FileSystems.join(run_dir, data_path(s, f)), f.sha256) for f in s.files
        ]
        if s.state:
            moves.append((s.state, FileSystems.join(run_dir, state_path(s)), None))
    return moves


def _pending(moves: list) -> list[tuple[str, str]]:
    """The moves still to do. A move whose source is gone was done by an earlier attempt
    (a rename deletes its source last, on an object store too) when its destination holds the
    expected bytes; anything else is a run that cannot be published."""
    pending = []
    for temp, final, sha in moves:
        if FileSystems.exists(temp):
            pending.append((temp, final))
            continue
        got = sha256_of(final) if sha else ("present" if FileSystems.exists(final) else None)
        if got is None or (sha and got != sha):
            raise RunFailed(
                f"{final} cannot be published: its temporary file {temp} is gone and it "
                + ("is not there" if got is None else f"holds other bytes (sha256 {got})")
            )
    return pending


def move_into_place(run_dir: str, chosen: list) -> int:
    """Renames every file of the ``chosen`` shards (``ShardResult``) from its temporary name to
    ``data/`` and ``state/`` of ``run_dir``; returns how many it renamed (fewer on a retry).
    Half of them are renamed before the fault point ``publish:rename``, so a test can fail
    the step between two renames."""
    moves = _moves(run_dir, chosen)
    pending = _pending(moves)
    if not pending:
        return 0
    folders = {final.rsplit("/", 1)[0] for _, final, _ in moves}
    for folder in sorted(folders):
        if not FileSystems.exists(folder):
            FileSystems.mkdirs(folder)
    half = (len(pending) + 1) // 2
    first, rest = pending[:half], pending[half:]
    FileSystems.rename([t for t, _ in first], [f for _, f in first])
    maybe_fail("publish", "rename")
    if rest:
        FileSystems.rename([t for t, _ in rest], [f for _, f in rest])
    return len(pending)


def read_latest(output: str) -> str | None:
    """The run id ``OUT/LATEST`` names, or None before any run."""
    latest = FileSystems.join(output, "LATEST")
    if not FileSystems.exists(latest):
        return None
    return read_bytes(latest).decode().strip()


def point_latest(output: str, run_id: str) -> bool:
    """Moves ``OUT/LATEST`` to ``run_id`` in one step: the new pointer is written beside it
    and renamed over it (an atomic replace on a local disk; on an object store the copy that
    renames it is atomic), so a kill never leaves a reader an empty or partial pointer. Does
    nothing, and returns False, when ``LATEST`` names the run already (a retry)."""
    if read_latest(output) == run_id:
        return False
    latest = FileSystems.join(output, "LATEST")
    staged = FileSystems.join(output, f".LATEST.{run_id}")
    write_bytes(staged, (run_id + "\n").encode(), "text/plain")
    FileSystems.rename([staged], [latest])
    return True
