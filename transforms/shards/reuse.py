"""Reusing a shard of the previous run in an incremental rebuild.

A shard is reused when the previous run wrote it from exactly the same images: the same
records (``record_fingerprint``), the same bytes of every image and panoptic PNG (their
CRC32C, from the store's checksum where it keeps one), the same shard count and categories,
and a file of every format asked for. Its files are then linked (or copied) under this run's
temporary names, unchanged, and its images are counted from the previous run's state: nothing
is read or decoded. Guarantee: a reused shard's files, counts and statistics equal what
writing it afresh would give.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from coco_beam.schemas.records import ShardFile
from coco_beam.transforms.runs.incremental import link_or_copy, shard_fingerprint
from coco_beam.transforms.shards.accounting import ShardTally, WrittenImage
from coco_beam.transforms.shards.load import in_order, probe

__all__ = ["link_previous", "reusable_fingerprint"]


def reusable_fingerprint(
    plans: list,
    record_fps: list,
    known: dict,
    previous: dict,
    *,
    num_shards: int,
    categories: dict,
    formats: tuple,
    pool,
    window: int,
    filesystem,
) -> str | None:
    """The shard's fingerprint when the previous run (``previous``: its entry of this shard;
    ``known``: its state rows by image id) wrote it from exactly these unchanged images, in
    every format of ``formats``; else None. The files are probed on ``pool``, at most
    ``window`` ahead."""
    if len(known) != len(plans) or any(
        (row := known.get(plan.image_id)) is None
        or not row["written"]
        or row["record_fp"] != fp
        or (plan.panoptic is not None and row["panoptic_stats"] is None)
        for plan, fp in zip(plans, record_fps, strict=True)
    ):
        return None
    probe_one = functools.partial(probe, filesystem=filesystem)
    for plan, (image_fp, panoptic_fp) in in_order(pool, probe_one, plans, window):
        row = known[plan.image_id]
        if (image_fp, panoptic_fp) != (row["image_fp"], row["panoptic_fp"]):
            return None
    members = [
        (p.image_id, fp, known[p.image_id]["image_fp"], known[p.image_id]["panoptic_fp"])
        for p, fp in zip(plans, record_fps, strict=True)
    ]
    fingerprint = shard_fingerprint(num_shards, categories, members)
    if fingerprint != previous["fingerprint"] or any(f not in previous["files"] for f in formats):
        return None
    return fingerprint


def link_previous(
    plans: list,
    known: dict,
    previous: dict,
    *,
    formats: tuple,
    temp_path: Callable[[str], str],
    tally: ShardTally,
) -> tuple[tuple[ShardFile, ...], str]:
    """Puts the previous run's files of the shard under this run's temporary names
    (``temp_path(format or "state")``) and counts its images into ``tally`` from the state.
    Returns the files and the state's temporary path. Raises the filesystem's error when a
    previous file is gone."""
    files = []
    for fmt in formats:
        old = previous["files"][fmt]
        temp = temp_path(fmt)
        link_or_copy(old["path"], temp)
        files.append(ShardFile(fmt, temp, old["bytes"], old["sha256"]))
    state = temp_path("state")
    link_or_copy(previous["state"], state)
    for plan in plans:
        tally.add(plan, WrittenImage.from_state(plan, known[plan.image_id]))
    return tuple(files), state
