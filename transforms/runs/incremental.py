"""Incremental rebuilds: fingerprints, the previous run's state, and what changed.

A rebuild into an output that already holds a complete run compares each image with that run's
state (``schemas.state``):

  * an image is **unchanged** when its record fingerprint (everything its row takes from the
    annotation files) and the CRC32C of its bytes (and of its panoptic PNG) equal the state's,
    and it was written; it is then neither decoded nor counted again: its row is rebuilt from
    the plan, its bytes and the state's facts, and its statistics from the same facts;
  * a shard is **reused** when the previous run wrote the same shard (same split, index and
    shard count) from exactly the same unchanged images, the same categories and settings: its
    files are linked (on a local disk) or copied by the object store into the new run, never
    rewritten, so their bytes are those of the previous run.

Guarantee: a rebuild writes the same bytes as a full build of the same input with the same
settings and library versions (shards, state and statistics), because everything a row or a
statistic depends on is in the fingerprints, and everything else is recomputed. A previous run
with other settings, versions or state format is not reused (``load_previous`` says why).
CRC32C finds any accidental change of a file; ``--full`` rebuilds everything regardless.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
import os

import google_crc32c
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import BeamIOError, CompressionTypes
from apache_beam.io.filesystems import FileSystems

from coco_beam.schemas.records import ImagePlan
from coco_beam.schemas.state import STATE_SCHEMA, STATE_VERSION
from coco_beam.transforms.images.decode import is_not_found

__all__ = [
    "PreviousBuild",
    "PreviousRun",
    "crc32c_hex",
    "latest_run",
    "link_or_copy",
    "load_previous",
    "read_fingerprints",
    "read_manifest",
    "read_state",
    "record_fingerprint",
    "shard_fingerprint",
    "state_bytes",
    "stored_crc32c",
    "summarize_changes",
]

# Settings that change no byte of the output: a previous run that differs only in these is
# still used.
_NEUTRAL_SETTINGS = ("max_rejected_fraction",)


def crc32c_hex(data: bytes) -> str:
    """CRC32C of ``data`` as 8 hex digits: what GCS keeps for every object."""
    return f"{google_crc32c.value(data):08x}"


def stored_crc32c(path: str) -> str | None:
    """The CRC32C an object store keeps for ``path`` (no download), or None where the store
    keeps none (a local disk: read the bytes and use ``crc32c_hex``)."""
    if FileSystems.get_scheme(path) != "gs":
        return None
    checksum = FileSystems.checksum(path)
    return base64.b64decode(checksum).hex() if checksum else None


def _canonical(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=repr)


def record_fingerprint(plan: ImagePlan) -> str:
    """A fingerprint of everything the image's row and statistics take from the annotation
    files: ids, name, size, annotations (with their rasterized masks), captions, flags and the
    panoptic record. Paths and source file names are left out: moving the dataset changes
    nothing written."""
    panoptic = None
    if plan.panoptic is not None:
        panoptic = {"file_name": plan.panoptic["file_name"], "segments": plan.panoptic["segments"]}
    doc = [
        plan.split,
        plan.image_id,
        plan.file_name,
        plan.width,
        plan.height,
        plan.annotations,
        plan.captions,
        plan.flags,
        panoptic,
    ]
    return hashlib.sha256(_canonical(doc).encode()).hexdigest()[:32]


def shard_fingerprint(num_shards: int, categories: dict, members: list[tuple]) -> str:
    """A shard's fingerprint: its shard count, its split's categories and its members'
    ``(image_id, record_fp, image_fp, panoptic_fp)`` in order."""
    cats = sorted(categories.values(), key=lambda c: c["id"])
    return hashlib.sha256(_canonical([num_shards, cats, members]).encode()).hexdigest()[:32]


def state_bytes(rows: list[dict]) -> bytes:
    sink = io.BytesIO()
    table = pa.Table.from_pylist(rows, schema=STATE_SCHEMA)
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def read_state(path: str) -> dict[int, dict]:
    """``{image_id: row}`` of one state file."""
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        table = pq.read_table(io.BytesIO(f.read()))
    return {row["image_id"]: row for row in table.to_pylist()}


def link_or_copy(source: str, destination: str) -> None:
    """Puts ``source``'s bytes at ``destination`` without rewriting them: a hard link on a
    local disk (a copy where links are not possible), the store's own copy elsewhere."""
    if FileSystems.get_scheme(source) is None and FileSystems.get_scheme(destination) is None:
        os.makedirs(os.path.dirname(destination), exist_ok=True)
        try:
            os.link(source, destination)
            return
        except FileNotFoundError:
            raise
        except OSError:
            pass  # another device, or no links there: copy
    try:
        FileSystems.copy([source], [destination])
    except BeamIOError as exc:
        # Beam reports per file; a source that is not there is a permanent "not found".
        inner = list((exc.exception_details or {}).values())
        if inner and all(is_not_found(e) or is_not_found(e.__cause__ or e) for e in inner):
            raise FileNotFoundError(source) from exc
        raise


@dataclasses.dataclass(frozen=True)
class PreviousRun:
    """The last complete run of an output: per shard ``(split, index, num_shards)`` its
    ``fingerprint``, ``state`` path and ``files`` (format -> path, bytes, sha256). ``why``:
    empty when a rebuild can reuse it, else why not (its state still tells what changed)."""

    run_id: str
    run_dir: str
    shards: dict
    why: str = ""

    def shard(self, split: str, index: int, num_shards: int) -> dict | None:
        return self.shards.get((split, index, num_shards))

    def states(self) -> list[str]:
        return sorted({s["state"] for s in self.shards.values()})


@dataclasses.dataclass(frozen=True, kw_only=True)
class PreviousBuild:
    """What a build knows of its output before it starts: its own ``settings`` (the ones that
    shape the bytes), the output's last complete run (``previous``, None before any or when its
    state is unusable) and that run again as ``reusable`` when this build may reuse its shards
    (None for a full build)."""

    settings: dict
    previous: PreviousRun | None = None
    reusable: PreviousRun | None = None


def latest_run(output: str) -> tuple[str, str] | None:
    """``(run_id, run folder)`` of the run ``OUT/LATEST`` names, or None before any."""
    latest = FileSystems.join(output, "LATEST")
    if not FileSystems.exists(latest):
        return None
    with FileSystems.open(latest, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        run_id = f.read().decode().strip()
    return run_id, FileSystems.join(output, "runs", run_id)


def read_manifest(run_dir: str) -> dict:
    with FileSystems.open(
        FileSystems.join(run_dir, "manifest.json"), compression_type=CompressionTypes.UNCOMPRESSED
    ) as f:
        return json.loads(f.read())


def load_previous(output: str, settings: dict, versions: dict) -> tuple[PreviousRun | None, str]:
    """The output's last complete run, if it has a state of this version, else ``(None,
    why)``; its ``why`` says whether a rebuild can reuse it."""
    latest = latest_run(output)
    if latest is None:
        return None, "no previous run"
    run_id, run_dir = latest
    try:
        manifest = read_manifest(run_dir)
    except Exception as exc:  # noqa: BLE001 - an unreadable previous run is only not reused
        return None, f"previous run {run_id}: manifest unreadable ({type(exc).__name__})"
    if manifest.get("state_version") != STATE_VERSION:
        return None, f"previous run {run_id} has no state of version {STATE_VERSION}"
    shards: dict = {}
    for entry in manifest.get("shards", []):
        key = (entry["split"], entry["index"], entry["num_shards"])
        shard = shards.setdefault(
            key,
            {
                "fingerprint": entry["fingerprint"],
                "state": FileSystems.join(run_dir, entry["state"]),
                "files": {},
            },
        )
        shard["files"][entry["format"]] = {
            "path": FileSystems.join(run_dir, entry["path"]),
            "bytes": entry["bytes"],
            "sha256": entry["sha256"],
        }

    def neutral(s):
        return {k: v for k, v in s.items() if k not in _NEUTRAL_SETTINGS}

    old = neutral(manifest.get("settings", {}))
    why = ""
    if old != neutral(settings):
        changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        why = "settings changed: " + ", ".join(changed)
    elif manifest.get("versions") != versions:
        changed = sorted(
            k
            for k in set(versions) | set(manifest.get("versions", {}))
            if versions.get(k) != manifest.get("versions", {}).get(k)
        )
        why = "library versions changed: " + ", ".join(changed)
    return PreviousRun(run_id, run_dir, shards, why), why


def read_fingerprints(paths: list[str]) -> tuple[dict, list[str]]:
    """``{(split, image_id): (record_fp, image_fp, panoptic_fp)}`` of state files named
    ``<split>-SSSSS-of-NNNNN.parquet``, and the paths that are not there."""
    out, missing = {}, []
    for path in paths:
        split = path.rsplit("/", 1)[-1].rsplit("-", 3)[0]
        try:
            rows = read_state(path)
        except Exception as exc:
            if not is_not_found(exc):
                raise
            missing.append(path)
            continue
        for image_id, row in rows.items():
            out[split, image_id] = (row["record_fp"], row["image_fp"], row["panoptic_fp"])
    return out, missing


_CHANGE_COUNTS = ("images_added", "images_removed", "images_modified", "annotations_changed")


def summarize_changes(old: dict, new: dict) -> dict:
    """What changed between two states, each ``{(split, image_id): (record_fp, image_fp,
    panoptic_fp)}``: images added, removed, with other bytes (``images_modified``) and with
    other annotation records (``annotations_changed``: images whose annotations, captions,
    panoptic record or JSON entry changed), per split and overall."""
    per_split: dict = {}

    def bump(split, key):
        entry = per_split.setdefault(
            split,
            dict.fromkeys(_CHANGE_COUNTS, 0),
        )
        entry[key] += 1

    for key, fps in new.items():
        before = old.get(key)
        if before is None:
            bump(key[0], "images_added")
            continue
        if before[1:] != fps[1:]:
            bump(key[0], "images_modified")
        if before[0] != fps[0]:
            bump(key[0], "annotations_changed")
    for key in old.keys() - new.keys():
        bump(key[0], "images_removed")
    totals = dict.fromkeys(_CHANGE_COUNTS, 0)
    for entry in per_split.values():
        for k, v in entry.items():
            totals[k] += v
    return {**totals, "splits": dict(sorted(per_split.items()))}
