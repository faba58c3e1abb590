"""``AssignShards``: size each split's shards from a listing of its images folder, then key every
plan by its deterministic shard.

Listing a folder (one paginated call per thousand objects on an object store) gives the count
and total size of its files without a request per image. A split's bytes are estimated as its
number of images times the folder's mean file size, which is exact when the folder holds just
that split and still sensible when one folder holds several splits. Plans are keyed, not moved.
"""

from __future__ import annotations

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from coco_beam.transforms.runtime.packing import pack
from coco_beam.transforms.shards.sharding import num_shards_for, shard_index

__all__ = ["AssignShards", "key_by_shard", "list_folder"]


def list_folder(split: str, images_dir: str):
    """``(split, (file count, total bytes))`` of every file under ``images_dir``."""
    root = images_dir.rstrip("/") + "/"
    metadata = FileSystems.match([root + "**"])[0].metadata_list
    return split, (len(metadata), sum(m.size_in_bytes for m in metadata))


def _shard_counts(kv, listings, shard_bytes, fixed):
    split, num_images = kv
    files, total = listings.get(split, (0, 0))
    estimate = num_images * total // files if files else 0
    return split, num_shards_for(estimate, num_images, shard_bytes, fixed)


def key_by_shard(batch, num_shards):
    """``((split, shard), plans)`` for every shard the batch's plans fall in; bucket 0 of a
    split (always present) also names every other shard of the split, with no plans, so an
    empty shard is still written and the ``-of-NNNNN`` names hold."""
    n = num_shards[batch.split]
    by_shard: dict[int, list] = {}
    for plan in batch.plans:
        by_shard.setdefault(shard_index(batch.split, plan.image_id, n), []).append(plan)
    if batch.bucket == 0:
        for index in range(n):
            by_shard.setdefault(index, [])
    for index in sorted(by_shard):
        yield (batch.split, index), pack(by_shard[index])


class AssignShards(beam.PTransform):
    """Takes ``PlanBatch``es, and ``image_counts`` (``(split, n)``: image records read);
    returns ``keyed``: ``((split, shard_index), packed [plan, ...])``, at least one for every shard
    of every split, so an empty shard is still written and the ``-of-NNNNN`` names hold;
    ``num_shards`` (``(split, n)``); ``listed`` (``(split, (files, bytes))`` of each images
    folder).

    Deterministic: the assignment depends on ``(split, image_id)``, the split's count of image
    records and its folder's listing (or ``num_shards``) only.
    """

    def __init__(
        self, images_dirs: dict, shard_bytes: int, num_shards: int | None = None, *, image_counts
    ):
        super().__init__()
        self._image_counts = image_counts
        self._images_dirs = dict(images_dirs)
        self._shard_bytes = shard_bytes
        self._num_shards = num_shards

    def expand(self, plans):
        listed = (
            plans.pipeline
            | "ListFolders" >> beam.Create(sorted(self._images_dirs.items()), reshuffle=False)
            | "ListImages" >> beam.MapTuple(list_folder)
        )
        # Sized from the image records read, not from the plans: the keying below then fuses
        # with the steps that made the plans, and plans cross the runner once.
        num_shards = (
            self._image_counts
            | "CountPerSplit" >> beam.CombinePerKey(sum)
            | "CountShards"
            >> beam.Map(
                _shard_counts,
                listings=beam.pvalue.AsDict(listed),
                shard_bytes=self._shard_bytes,
                fixed=self._num_shards,
            )
        )
        keyed = plans | "KeyByShard" >> beam.FlatMap(
            key_by_shard, num_shards=beam.pvalue.AsDict(num_shards)
        )
        return {
            "keyed": keyed,
            "num_shards": num_shards,
            "listed": listed,
        }
