"""``AssignShards``: size each split from a listing of its images folder, then key every plan by
its deterministic shard.

Listing a folder (one paginated call on an object store) gives every file's size without a
request per image. Only ids, names and sizes are joined here; plans are keyed, not moved.
"""

from __future__ import annotations

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from transforms.sharding import num_shards_for, shard_index

__all__ = ["AssignShards", "list_images"]

COUNTS = "counts"


def list_images(split: str, images_dir: str):
    """Yields ``((split, relative_path), size)`` for every file under ``images_dir``."""
    root = images_dir.rstrip("/") + "/"
    result = FileSystems.match([root + "**"])[0]
    for meta in result.metadata_list:
        path = meta.path
        if path.startswith(root):
            yield (split, path[len(root) :]), meta.size_in_bytes


def _sizes_of_listed(kv):
    """Per file: its plans' ``(split, size)``; a file no annotation file lists is counted."""
    (split, _), grouped = kv
    sizes, ids = list(grouped["sizes"]), list(grouped["ids"])
    if not ids:
        yield beam.pvalue.TaggedOutput(COUNTS, (("unlisted_files", split), 1))
        return
    for _ in ids:
        yield split, (sizes[0] if sizes else 0, 1)


def _sum_pairs(pairs):
    total_bytes, total_images = 0, 0
    for size, count in pairs:
        total_bytes += size
        total_images += count
    return total_bytes, total_images


def _shard_counts(kv, shard_bytes, fixed):
    split, (total_bytes, total_images) = kv
    return split, num_shards_for(total_bytes, total_images, shard_bytes, fixed)


def _key_by_shard(plan, num_shards):
    n = num_shards[plan.split]
    return (plan.split, shard_index(plan.split, plan.image_id, n)), plan


def _all_shards(split_count):
    split, n = split_count
    for index in range(n):
        yield (split, index), None


class AssignShards(beam.PTransform):
    """Takes ``ImagePlan``s; returns ``((split, shard_index), plan)`` plus one
    ``((split, shard_index), None)`` per shard, so an empty shard is still written and the
    ``-of-NNNNN`` names hold. Also returns ``num_shards`` (``(split, n)``) and ``counts``.

    Deterministic: the assignment depends on ``(split, image_id)`` and the split's total image
    bytes (or ``num_shards``) only.
    """

    def __init__(self, images_dirs: dict, shard_bytes: int, num_shards: int | None = None):
        super().__init__()
        self._images_dirs = dict(images_dirs)
        self._shard_bytes = shard_bytes
        self._num_shards = num_shards

    def expand(self, plans):
        listing = (
            plans.pipeline
            | "ListFolders" >> beam.Create(sorted(self._images_dirs.items()))
            | "ListImages" >> beam.FlatMapTuple(list_images)
        )
        ids = plans | "FileKeys" >> beam.Map(lambda p: ((p.split, p.file_name), p.image_id))
        sized = (
            {"sizes": listing, "ids": ids}
            | "JoinSizes" >> beam.CoGroupByKey()
            | "SizeOfEach"
            >> beam.FlatMap(_sizes_of_listed)
            .with_output_types(tuple[str, tuple[int, int]])
            .with_outputs(COUNTS, main="sizes")
        )
        num_shards = (
            sized.sizes
            | "SumSizes" >> beam.CombinePerKey(_sum_pairs)
            | "CountShards"
            >> beam.Map(_shard_counts, shard_bytes=self._shard_bytes, fixed=self._num_shards)
        )
        keyed = plans | "KeyByShard" >> beam.Map(
            _key_by_shard, num_shards=beam.pvalue.AsDict(num_shards)
        )
        placeholders = num_shards | "EveryShard" >> beam.FlatMap(_all_shards)
        return {
            "keyed": (keyed, placeholders) | "WithEveryShard" >> beam.Flatten(),
            "num_shards": num_shards,
            "counts": sized[COUNTS],
        }
